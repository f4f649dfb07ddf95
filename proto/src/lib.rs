//! The kubelet device plug-in wire API, `v1beta1`, exactly as upstream defines it
//! (`v1beta1/api.proto` is a verbatim copy; package and field numbers are the contract).

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
