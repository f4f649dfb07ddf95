//! The `wasm-device-plugin` binary: `run` on a node, `demo` against a simulated one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use wasm_device_plugin::config::{DEFAULT_GUESTS_DIR, HostConfig};
use wasm_device_plugin::kubelet::RegistrationMode;
use wasm_device_plugin::kubelet::pod_resources::PodResourcesConfig;
use wasm_device_plugin::node::Node;
use wasm_device_plugin::runtime::signature;

#[cfg(feature = "demo")]
mod demo;

#[derive(Parser)]
#[command(
    version,
    about = "A Kubernetes device plug-in host whose vendor logic runs as sandboxed WebAssembly components"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "WDP_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Registration {
    Direct,
    Watcher,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the node's devices to the kubelet (runs until SIGTERM or Ctrl-C).
    Run(RunArgs),
    /// Serve a bundled simulated DGX H100 node to an in-process kubelet stand-in and
    /// print what the kubelet sees: registration, device lists, an allocation.
    #[cfg(feature = "demo")]
    Demo,
    /// Create an Ed25519 key pair for signing guests: <out>.key (secret, mode 0600)
    /// and <out>.pub (a line for the host's --trusted-keys file).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a guest: writes <guest>.wasm.sig, which the host checks against its
    /// --trusted-keys before loading the guest.
    Sign {
        /// The secret key file from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The guest to sign.
        guest: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Root under which /sys, /proc and /dev are read (a fixture tree for testing).
    #[arg(long, env = "WDP_HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// Directory of <name>.wasm guests and their optional <name>.json/.yaml config.
    #[arg(long, env = "WDP_GUESTS_DIR", default_value = DEFAULT_GUESTS_DIR)]
    guests_dir: PathBuf,
    /// The kubelet's device-plugin directory (holds kubelet.sock).
    #[arg(long, env = "WDP_DEVICE_PLUGIN_DIR", default_value = kubelet_api::v1beta1::DEVICE_PLUGIN_PATH)]
    device_plugin_dir: PathBuf,
    /// Seconds between device re-enumerations; only changes reach the kubelet.
    #[arg(long, env = "WDP_RESCAN_SECONDS", default_value_t = 5.0)]
    rescan_seconds: f64,
    /// Seconds between checks of the guests directory for changes (hot reload).
    #[arg(long, env = "WDP_RELOAD_SECONDS", default_value_t = 1.0)]
    reload_seconds: f64,
    /// Host-private directory for compiled guests, so restarts skip compilation
    /// (use an emptyDir; never a directory others can write).
    #[arg(long, env = "WDP_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// File of trusted Ed25519 public keys (hex, one per line); when set, only guests
    /// with a valid <name>.wasm.sig load.
    #[arg(long, env = "WDP_TRUSTED_KEYS")]
    trusted_keys: Option<PathBuf>,
    /// How the kubelet learns about each resource: `direct` (Register on kubelet.sock)
    /// or `watcher` (a socket in the plugin watcher's directory).
    #[arg(long, env = "WDP_REGISTRATION", value_enum, default_value = "direct")]
    registration: Registration,
    /// The plugin watcher's directory, for `--registration watcher`.
    #[arg(long, env = "WDP_PLUGINS_REGISTRY_DIR", default_value = kubelet_api::pluginregistration::PLUGINS_REGISTRY_PATH)]
    plugins_registry_dir: PathBuf,
    /// The kubelet's pod-resources socket, polled to tell guests when devices are
    /// released (the device plug-in API has no "deallocate").
    #[arg(long, env = "WDP_POD_RESOURCES_SOCKET", default_value = kubelet_api::podresources::SOCKET)]
    pod_resources_socket: PathBuf,
    /// Seconds between pod-resources polls.
    #[arg(long, env = "WDP_RELEASE_POLL_SECONDS", default_value_t = 5.0)]
    release_poll_seconds: f64,
    /// Do not poll pod resources (guests are then never told about releases).
    #[arg(long, env = "WDP_NO_RELEASE_DETECTION")]
    no_release_detection: bool,
    /// Address for /metrics (Prometheus), /healthz and /readyz; `off` to disable.
    #[arg(long, env = "WDP_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    metrics_addr: String,
    /// Node directory for CDI specs written by guests.
    #[arg(long, env = "WDP_CDI_DIR", default_value = wasm_device_plugin::config::DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Run(args) => {
            init_logging(cli.log_format, "info");
            runtime.block_on(run(args))
        }
        #[cfg(feature = "demo")]
        Command::Demo => {
            init_logging(cli.log_format, "off");
            runtime.block_on(demo::run())
        }
        Command::Keygen { out } => keygen(&out),
        Command::Sign { key, guest } => sign(&key, &guest),
    }
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = signature::generate().context("cannot read system randomness")?;
    let secret_path = out.with_extension("key");
    let public_path = out.with_extension("pub");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .and_then(|mut f| writeln!(f, "{secret}"))
        .with_context(|| format!("cannot create {}", secret_path.display()))?;
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    println!(
        "secret key: {} (keep it off the nodes)",
        secret_path.display()
    );
    println!(
        "public key: {} (add its line to the host's --trusted-keys file)",
        public_path.display()
    );
    Ok(())
}

fn sign(key: &Path, guest: &Path) -> anyhow::Result<()> {
    let secret =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    let bytes = std::fs::read(guest).with_context(|| format!("cannot read {}", guest.display()))?;
    let sig =
        signature::sign(&secret, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let sig_path = signature::signature_path(guest);
    std::fs::write(&sig_path, format!("{sig}\n"))
        .with_context(|| format!("cannot write {}", sig_path.display()))?;
    println!("{}", sig_path.display());
    Ok(())
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rescan_seconds.is_finite() && args.rescan_seconds >= 0.1,
        "--rescan-seconds must be at least 0.1"
    );
    anyhow::ensure!(
        args.reload_seconds.is_finite() && args.reload_seconds >= 0.1,
        "--reload-seconds must be at least 0.1"
    );
    let mut config = HostConfig::new(&args.host_root, &args.guests_dir, &args.device_plugin_dir);
    config.rescan_interval = Duration::from_secs_f64(args.rescan_seconds);
    config.reload_interval = Duration::from_secs_f64(args.reload_seconds);
    config.cache_dir = args.cache_dir;
    config.trusted_keys = args.trusted_keys;
    config.cdi_dir = args.cdi_dir;
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
    config.kubelet.mode = match args.registration {
        Registration::Direct => RegistrationMode::Direct,
        Registration::Watcher => RegistrationMode::PluginWatcher {
            registry_dir: args.plugins_registry_dir,
        },
    };
    tracing::info!(
        host_root = %args.host_root.display(),
        guests = %args.guests_dir.display(),
        kubelet = %config.kubelet.kubelet_socket().display(),
        "starting"
    );
    let node = Node::start(config).await?;
    wait_for_signal().await?;
    tracing::info!("stopping: deregistering and removing sockets");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
    }
    Ok(())
}
