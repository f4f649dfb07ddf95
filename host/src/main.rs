//! The `wasm-device-plugin` binary: `run` on a node, `demo` against a simulated one.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use wasm_device_plugin::config::{DEFAULT_GUESTS_DIR, HostConfig};
use wasm_device_plugin::node::Node;

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
    }
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
    let mut config = HostConfig::new(&args.host_root, &args.guests_dir, &args.device_plugin_dir);
    config.rescan_interval = Duration::from_secs_f64(args.rescan_seconds);
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
