//! The kubelet's wire APIs a device plug-in meets, exactly as upstream defines them:
//! the device plug-in API `v1beta1` (`v1beta1/api.proto`, a verbatim copy), the
//! plugin-watcher registration API (`pluginregistration`) and the pod-resources API
//! (`podresources/api.proto`, package `v1`, a verbatim copy). Packages and field numbers
//! are the contract.

/// Messages, the `Registration` service the kubelet serves and the `DevicePlugin`
/// service each plug-in serves.
// The upstream proto's comments are kept verbatim in the generated code.
#[allow(clippy::doc_overindented_list_items, clippy::doc_lazy_continuation)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");

    /// The API version a plug-in registers with (`RegisterRequest.version`).
    pub const VERSION: &str = "v1beta1";
    /// The kubelet's registration socket, relative to the device-plugin directory.
    pub const KUBELET_SOCKET: &str = "kubelet.sock";
    /// Where the kubelet looks for device-plugin sockets on a node.
    pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins/";
    /// The kubelet's deadline for `PreStartContainer`, in seconds.
    pub const PRE_START_TIMEOUT_SECS: u64 = 30;
    /// The exact health strings the kubelet compares against.
    pub const HEALTHY: &str = "Healthy";
    /// See [`HEALTHY`].
    pub const UNHEALTHY: &str = "Unhealthy";
}

/// The plugin-watcher registration API: the kubelet finds plug-in sockets in
/// `plugins_registry` and asks them `GetInfo`.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");

    /// `PluginInfo.type` of a device plug-in.
    pub const DEVICE_PLUGIN: &str = "DevicePlugin";
    /// Where the kubelet's plugin watcher looks for sockets.
    pub const PLUGINS_REGISTRY_PATH: &str = "/var/lib/kubelet/plugins_registry";
}

/// The pod-resources API: which devices the kubelet has assigned to which containers.
#[allow(clippy::doc_overindented_list_items, clippy::doc_lazy_continuation)]
pub mod podresources {
    tonic::include_proto!("v1");

    /// The kubelet's pod-resources socket.
    pub const SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
}
