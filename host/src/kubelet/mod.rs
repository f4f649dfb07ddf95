//! Kubelet layer: the device plug-in protocol `v1beta1` over unix sockets.
//!
//! It knows sockets, registration and gRPC, and nothing about Wasm: every answer comes
//! from a [`crate::resource::ResourceService`]. One [`plugin::run`] task per advertised
//! resource serves a `DevicePlugin` gRPC server on a socket name unique to each
//! registration instance, registers it with the kubelet, and starts over on a fresh
//! socket whenever the kubelet restarts, the socket disappears or the kubelet's
//! `ListAndWatch` stream ends.

pub mod convert;
pub mod dial;
pub mod plugin;
pub mod pod_resources;
pub mod registration;
pub mod service;
pub mod socket;
pub mod watcher;

use std::path::PathBuf;
use std::time::Duration;

/// How the kubelet learns about the plug-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationMode {
    /// `Register` on `kubelet.sock` in the device-plugin directory (the default, and
    /// what kubernetes.io documents).
    Direct,
    /// A socket in the plugin watcher's directory (`plugins_registry`) answering
    /// `GetInfo`; survives kubelet restarts without re-registering.
    PluginWatcher { registry_dir: PathBuf },
}

/// Where and how to talk to the kubelet.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The device-plugin directory holding `kubelet.sock` and the plug-ins' sockets.
    pub device_plugin_dir: PathBuf,
    pub mode: RegistrationMode,
    /// How often the registration loop checks `kubelet.sock` and its own socket.
    pub poll_interval: Duration,
    /// Deadline for one `Register` call. The kubelet dials back and calls
    /// `GetDevicePluginOptions` within it, so it must be generous (kubelet-interop §2.1).
    pub register_timeout: Duration,
    /// Watcher mode: how long the host waits for the plugin watcher's `GetInfo`, and
    /// after it for `NotifyRegistrationStatus`, before it warns that the kubelet is not
    /// registering the resource.
    pub watcher_patience: Duration,
}

impl KubeletConfig {
    pub fn new(device_plugin_dir: impl Into<PathBuf>) -> Self {
        Self {
            device_plugin_dir: device_plugin_dir.into(),
            mode: RegistrationMode::Direct,
            poll_interval: Duration::from_millis(100),
            register_timeout: Duration::from_secs(40),
            watcher_patience: Duration::from_secs(30),
        }
    }

    /// `kubelet.sock` in the device-plugin directory.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.device_plugin_dir
            .join(kubelet_api::v1beta1::KUBELET_SOCKET)
    }
}
