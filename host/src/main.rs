//! The `wasm-device-plugin` binary: `run` on a node, `demo` against a simulated one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use wasm_device_plugin::node::Node;

mod args;
mod config_file;
#[cfg(feature = "demo")]
mod demo;
mod tools;

use args::{NodeArgs, RunArgs};

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
    /// A JSON file of flag values (`{"guests-dir": "/etc/guests"}`), used where neither
    /// a flag nor its environment variable is given.
    #[arg(long, global = true, env = "WDP_CONFIG")]
    config: Option<PathBuf>,
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
    /// Describe a guest: size, digest, contract version, imports and exports, signature,
    /// and (with its policy beside it) the resources it advertises.
    Inspect {
        guest: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Load the guests against a host root (a fixture or the real node) and print what
    /// would be advertised, without registering anything.
    Check {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Precompile guests into the compiled-guest cache (--cache-dir), so that the next
    /// start does not compile them.
    Compile {
        /// The guests to compile.
        #[arg(required = true)]
        guests: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Internal: compile the component on stdin and write the serialized code to stdout.
    /// The host runs this as a child process within the compile budget.
    #[command(name = "compile-guest", hide = true)]
    CompileGuest,
}

fn main() -> anyhow::Result<()> {
    config_file::load_as_env_defaults(&<Cli as clap::CommandFactory>::command())?;
    let cli = Cli::parse();
    // Built only for the commands that need it: the compiler child must not spend its
    // address-space budget on worker threads.
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    match cli.command {
        Command::Run(args) => {
            init_logging(cli.log_format, "info");
            let runtime = runtime()?;
            let result = runtime.block_on(run(args));
            // Do not wait on a task still blocked in a hung kubelet's socket.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            result
        }
        #[cfg(feature = "demo")]
        Command::Demo => {
            init_logging(cli.log_format, "off");
            runtime()?.block_on(demo::run())
        }
        Command::Keygen { out } => tools::keygen(&out),
        Command::Sign { key, guest } => tools::sign(&key, &guest),
        Command::Inspect { guest, node } => {
            init_logging(cli.log_format, "warn");
            runtime()?.block_on(tools::inspect(&guest, &node))
        }
        Command::Check { node } => {
            init_logging(cli.log_format, "warn");
            runtime()?.block_on(tools::check(&node))
        }
        Command::Compile { guests, node } => {
            init_logging(cli.log_format, "warn");
            runtime()?.block_on(tools::compile(&guests, &node))
        }
        Command::CompileGuest => {
            std::process::exit(i32::from(wasm_device_plugin::runtime::compiler::run_child()))
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

/// How long stopping may take after SIGTERM before the host exits anyway: inside the
/// 5 s that operators plan a DaemonSet rollout with, and far inside the kubelet's
/// default grace period (30 s). Whatever is left (a socket) the next start removes.
const SHUTDOWN_BUDGET: std::time::Duration = std::time::Duration::from_secs(4);

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    tracing::info!(
        host_root = %config.host_root.display(),
        guests = %config.guests_dir.display(),
        kubelet = %config.kubelet.kubelet_socket().display(),
        "starting"
    );
    // Listening first: a SIGTERM while guests still load ends the start-up too.
    let signal = wait_for_signal();
    tokio::pin!(signal);
    let node = tokio::select! {
        node = Node::start(config) => node?,
        result = &mut signal => {
            result?;
            tracing::info!("stopping before start-up finished");
            return Ok(());
        }
    };
    signal.await?;
    tracing::info!("stopping: deregistering and removing sockets");
    if tokio::time::timeout(SHUTDOWN_BUDGET, node.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            budget = ?SHUTDOWN_BUDGET,
            "stopping took longer than its budget; exiting anyway (the next start removes sockets left behind)"
        );
    }
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
