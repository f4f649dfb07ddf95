//! Command-line arguments and how they become the host's configuration.
//!
//! Precedence is flags, then environment variables, then the config file (`--config`),
//! then defaults, as NVIDIA's plug-in does: `config_file::load` turns the file's entries
//! into environment defaults before the command line is parsed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use wasm_device_plugin::handout::DeviceNodes;
use wasm_device_plugin::kubelet::RegistrationMode;
use wasm_device_plugin::kubelet::pod_resources::PodResourcesConfig;
use wasm_device_plugin::node::config::{DEFAULT_GUESTS_DIR, HostConfig};
use wasm_device_plugin::nvml::LibrarySource;
use wasm_device_plugin::runtime::{CompileBudget, Compiler};

#[derive(Clone, Copy, ValueEnum)]
pub enum Registration {
    Direct,
    Watcher,
}

/// Where the node and the guests are: shared by `run` and `check`.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// Root under which /sys, /proc and /dev are read (a fixture tree for testing).
    #[arg(long, env = "WDP_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// Directory of <name>.wasm guests with their <name>.policy.json and optional config.
    #[arg(long, env = "WDP_GUESTS_DIR", default_value = DEFAULT_GUESTS_DIR)]
    pub guests_dir: PathBuf,
    /// Host-private directory for compiled guests, so restarts skip compilation
    /// (use an emptyDir; never a directory others can write).
    #[arg(long, env = "WDP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// MiB of compiled guests kept in --cache-dir; the least recently used go first.
    #[arg(long, env = "WDP_CACHE_MAX_MIB", default_value_t = 128)]
    pub cache_max_mib: u64,
    /// File of trusted Ed25519 public keys (hex, one per line); when set, only guests
    /// with a valid <name>.wasm.sig load.
    #[arg(long, env = "WDP_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,
    /// Node directory for CDI specs written by guests.
    #[arg(long, env = "WDP_CDI_DIR", default_value = wasm_device_plugin::node::config::DEFAULT_CDI_DIR)]
    pub cdi_dir: PathBuf,
    /// The host root is a fixture tree built without root: plain files stand in for
    /// device nodes. Never on a real node, where only character and block devices are
    /// device nodes.
    #[arg(long, env = "WDP_SIMULATED_NODE")]
    pub simulated_node: bool,
    /// Seconds compiling one guest may take (in a child process); a guest that takes
    /// longer is refused, and not tried again until it changes or the budget grows.
    #[arg(long, env = "WDP_COMPILE_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub compile_timeout_seconds: f64,
    /// MiB of address space compiling one guest may use (the child's RLIMIT_AS); a
    /// guest that needs more is refused, as for the timeout.
    #[arg(long, env = "WDP_COMPILE_MEMORY_MIB", default_value_t = 2048)]
    pub compile_memory_mib: u64,
    /// NVIDIA's management library for guests granted `nvml`: `auto` (libnvidia-ml.so.1
    /// in the node's library directories under the host root, then this process's own
    /// library path when the host root is `/`), `off`, or a file path as this process
    /// sees it. Without it guests fall back to sysfs.
    #[arg(long, env = "WDP_NVML_LIBRARY", default_value = "auto")]
    pub nvml_library: String,
}

/// Below this the compiler child cannot even map the host binary and start.
const MIN_COMPILE_MEMORY_MIB: u64 = 256;

impl NodeArgs {
    /// The host configuration these locations give (other settings at their defaults),
    /// compiling guests in children of this executable within the compile budget.
    pub fn config(&self, device_plugin_dir: &std::path::Path) -> anyhow::Result<HostConfig> {
        anyhow::ensure!(
            self.compile_timeout_seconds.is_finite() && self.compile_timeout_seconds >= 0.1,
            "--compile-timeout-seconds must be at least 0.1"
        );
        anyhow::ensure!(
            (MIN_COMPILE_MEMORY_MIB..=u64::MAX >> 20).contains(&self.compile_memory_mib),
            "--compile-memory-mib must be at least {MIN_COMPILE_MEMORY_MIB}"
        );
        let budget = CompileBudget {
            timeout: Duration::from_secs_f64(self.compile_timeout_seconds),
            memory_bytes: self.compile_memory_mib << 20,
        };
        let mut config = HostConfig::new(&self.host_root, &self.guests_dir, device_plugin_dir);
        config.cache_dir = self.cache_dir.clone();
        config.cache_max_bytes = self.cache_max_mib.saturating_mul(1 << 20);
        config.trusted_keys = self.trusted_keys.clone();
        config.cdi_dir = self.cdi_dir.clone();
        config.compiler = Compiler::this_executable(budget)
            .context("cannot find this executable to compile guests with")?;
        if self.simulated_node {
            config.device_nodes = DeviceNodes::Simulated;
        }
        config.nvml.library = match self.nvml_library.as_str() {
            "auto" => LibrarySource::Auto,
            "off" => LibrarySource::Off,
            path => LibrarySource::Path(PathBuf::from(path)),
        };
        Ok(config)
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The kubelet's device-plugin directory (holds kubelet.sock).
    #[arg(long, env = "WDP_DEVICE_PLUGIN_DIR", default_value = kubelet_api::v1beta1::DEVICE_PLUGIN_PATH)]
    pub device_plugin_dir: PathBuf,
    /// Seconds between device re-enumerations; only changes reach the kubelet.
    #[arg(long, env = "WDP_RESCAN_SECONDS", default_value_t = 5.0)]
    pub rescan_seconds: f64,
    /// Seconds between checks of the guests directory for changes (hot reload).
    #[arg(long, env = "WDP_RELOAD_SECONDS", default_value_t = 1.0)]
    pub reload_seconds: f64,
    /// How the kubelet learns about each resource: `direct` (Register on kubelet.sock;
    /// the default, and what kubernetes.io documents) or `watcher` (a socket in
    /// --plugins-registry-dir that the kubelet's plugin watcher finds and registers).
    /// In watcher mode a resource counts as registered (/readyz) only once the kubelet
    /// confirms it with NotifyRegistrationStatus; a refusal, or no GetInfo or no
    /// confirmation within 30 s, is logged as a warning saying what to check.
    #[arg(long, env = "WDP_REGISTRATION", value_enum, default_value = "direct")]
    pub registration: Registration,
    /// The plugin watcher's directory, for `--registration watcher`.
    #[arg(long, env = "WDP_PLUGINS_REGISTRY_DIR", default_value = kubelet_api::pluginregistration::PLUGINS_REGISTRY_PATH)]
    pub plugins_registry_dir: PathBuf,
    /// The kubelet's pod-resources socket, polled to tell guests when devices are
    /// released (the device plug-in API has no "deallocate").
    #[arg(long, env = "WDP_POD_RESOURCES_SOCKET", default_value = kubelet_api::podresources::SOCKET)]
    pub pod_resources_socket: PathBuf,
    /// Seconds between pod-resources polls.
    #[arg(long, env = "WDP_RELEASE_POLL_SECONDS", default_value_t = 5.0)]
    pub release_poll_seconds: f64,
    /// Do not poll pod resources (guests are then never told about releases).
    #[arg(long, env = "WDP_NO_RELEASE_DETECTION")]
    pub no_release_detection: bool,
    /// Address for /metrics (Prometheus), /healthz and /readyz; `off` to disable.
    #[arg(long, env = "WDP_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: String,
    /// Node directory where guests' node labels are written as Node Feature Discovery
    /// local feature files (one per guest, only under prefixes its policy grants);
    /// `off` to publish none.
    #[arg(long, env = "WDP_FEATURES_DIR", default_value = wasm_device_plugin::node::config::DEFAULT_FEATURES_DIR)]
    pub features_dir: String,
}

impl RunArgs {
    /// The host configuration: flags, then environment, then the config file, then defaults.
    pub fn config(self) -> anyhow::Result<HostConfig> {
        let args = self;
        anyhow::ensure!(
            args.rescan_seconds.is_finite() && args.rescan_seconds >= 0.1,
            "--rescan-seconds must be at least 0.1"
        );
        anyhow::ensure!(
            args.reload_seconds.is_finite() && args.reload_seconds >= 0.1,
            "--reload-seconds must be at least 0.1"
        );
        let mut config = args.node.config(&args.device_plugin_dir)?;
        config.rescan_interval = Duration::from_secs_f64(args.rescan_seconds);
        config.reload_interval = Duration::from_secs_f64(args.reload_seconds);
        config.metrics_addr = match args.metrics_addr.as_str() {
            "off" => None,
            addr => Some(
                addr.parse()
                    .with_context(|| format!("--metrics-addr {addr:?} is not host:port"))?,
            ),
        };
        if !args.no_release_detection {
            anyhow::ensure!(
                args.release_poll_seconds.is_finite() && args.release_poll_seconds >= 0.1,
                "--release-poll-seconds must be at least 0.1"
            );
            config.pod_resources = Some(PodResourcesConfig {
                socket: args.pod_resources_socket,
                interval: Duration::from_secs_f64(args.release_poll_seconds),
            });
        }
        config.features_dir = match args.features_dir.as_str() {
            "off" => None,
            dir => {
                anyhow::ensure!(
                    dir.starts_with('/'),
                    "--features-dir {dir:?} must be an absolute node path, or `off`"
                );
                Some(PathBuf::from(dir))
            }
        };
        config.kubelet.mode = match args.registration {
            Registration::Direct => RegistrationMode::Direct,
            Registration::Watcher => RegistrationMode::PluginWatcher {
                registry_dir: args.plugins_registry_dir,
            },
        };
        Ok(config)
    }
}
