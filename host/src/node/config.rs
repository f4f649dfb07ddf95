//! The host's configuration: where the node, the guests and the kubelet are, and how
//! often to look at them. Each guest's own policy is [`crate::policy`].

use crate::nvml::NvmlConfig;
use std::path::PathBuf;
use std::time::Duration;

use crate::handout::{DeviceNodes, NodeRoot};
use crate::kubelet::KubeletConfig;
use crate::kubelet::pod_resources::PodResourcesConfig;
use crate::policy::GuestLimits;
use crate::runtime::Compiler;

/// Where operators mount guests (a ConfigMap volume) by default.
pub const DEFAULT_GUESTS_DIR: &str = "/etc/wasm-device-plugin/guests";
/// Where CDI specs go on a node (the runtime also reads `/etc/cdi`; that one is the
/// administrator's).
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
/// Where Node Feature Discovery reads local feature files on a node (its `local` source).
pub const DEFAULT_FEATURES_DIR: &str = "/etc/kubernetes/node-feature-discovery/features.d";
/// How often the guests directory is checked for changes by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often devices are re-enumerated by default.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the host needs to serve a node.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Root under which every node path is resolved: `/` on a node, a fixture tree in
    /// tests and the demo.
    pub host_root: PathBuf,
    /// How device nodes under the host root are read: real character and block devices
    /// on a node; plain files standing in for them in a fixture tree built without root.
    pub device_nodes: DeviceNodes,
    /// Directory of `<name>.wasm` guests, each with an optional config file beside it.
    pub guests_dir: PathBuf,
    pub kubelet: KubeletConfig,
    /// How often every resource's devices are re-enumerated; only changes reach the kubelet.
    pub rescan_interval: Duration,
    /// Limits for guests whose policy sets none.
    pub limits: GuestLimits,
    /// Node directory where guests' CDI specs are written.
    pub cdi_dir: PathBuf,
    /// How often the guests directory is checked for changes (hot reload).
    pub reload_interval: Duration,
    /// Host-private directory for compiled guests (none: compile at every start).
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of compiled guests kept there (least recently used go first).
    pub cache_max_bytes: u64,
    /// Where guests are compiled: in process by default (tests, embedders); the binary
    /// compiles each in a child process within a budget, so that a compile bomb is
    /// refused instead of stalling or OOM-killing the host.
    pub compiler: Compiler,
    /// File of Ed25519 public keys; when set, only guests signed by one of them load.
    pub trusted_keys: Option<PathBuf>,
    /// Where to learn about released devices (none: guests are never told).
    pub pod_resources: Option<PodResourcesConfig>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (none: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// NVIDIA's management library for guests granted `nvml`.
    pub nvml: NvmlConfig,
    /// Node directory where guests' node labels are written as NFD feature files
    /// (none: labels are not published).
    pub features_dir: Option<PathBuf>,
}

impl HostConfig {
    /// The node that guests' hand-outs are checked against.
    pub fn node_root(&self) -> NodeRoot {
        NodeRoot::new(&self.host_root, self.device_nodes)
    }

    /// A configuration with the defaults for everything but the three locations.
    pub fn new(
        host_root: impl Into<PathBuf>,
        guests_dir: impl Into<PathBuf>,
        device_plugin_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            host_root: host_root.into(),
            device_nodes: DeviceNodes::Real,
            guests_dir: guests_dir.into(),
            kubelet: KubeletConfig::new(device_plugin_dir),
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
            limits: GuestLimits::default(),
            cdi_dir: PathBuf::from(DEFAULT_CDI_DIR),
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            cache_dir: None,
            cache_max_bytes: crate::runtime::cache::DEFAULT_MAX_BYTES,
            compiler: Compiler::InProcess,
            trusted_keys: None,
            pod_resources: None,
            metrics_addr: None,
            nvml: NvmlConfig::default(),
            features_dir: Some(PathBuf::from(DEFAULT_FEATURES_DIR)),
        }
    }
}
