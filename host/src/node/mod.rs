//! Assembles the layers for one node: loads the guests directory, serves a device
//! plug-in per accepted resource, and follows the directory as operators change it.

pub mod check;
pub mod config;
pub mod feature_files;
mod guest_task;
mod guests_dir;
pub mod ops;
pub mod ownership;
mod status_board;
mod supervisor;

pub use config::HostConfig;
pub use guests_dir::CONFIG_EXTENSIONS;

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kubelet::pod_resources;
use crate::nvml::Nvml;
use crate::readiness::Readiness;
use crate::resource::ResourceService;
use crate::runtime::Runtime;
use crate::runtime::cache::CompileCache;
use crate::runtime::engine::LoadStats;
use crate::runtime::signature::{SignatureError, TrustedKeys};
use supervisor::Supervisor;

/// Longest start-up waits for the guests' first loads (a compile bomb takes its whole
/// compile budget; the probes should not).
pub const INITIAL_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Failures that keep the host from starting at all (a bad guest never does).
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot start the WebAssembly runtime: {0:#}")]
    Runtime(wasmtime::Error),
    #[error("cannot read the guests directory {dir}: {source}")]
    GuestsDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trusted keys: {0}")]
    TrustedKeys(SignatureError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Ops {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A guest file or resource that was refused, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// What the node serves now.
#[derive(Clone, Default)]
pub struct Status {
    pub resources: Vec<Arc<ResourceService>>,
    pub skipped: Vec<Skipped>,
    /// Increases with every change to the served set or the refusals.
    pub generation: u64,
    /// Guests replaced by a new version.
    pub reloads_ok: u64,
    /// New versions refused (the previous one kept serving).
    pub reloads_refused: u64,
    /// The kubelet's view of the served resources: one shared, live record (not part of
    /// the snapshot), which the device plug-ins update and `/readyz` reads.
    pub readiness: Arc<Readiness>,
}

/// The runtime `config` asks for: its compiler, cache and trusted keys.
pub fn runtime(config: &HostConfig) -> Result<Runtime, NodeError> {
    let mut runtime = Runtime::new(
        config.host_root.clone(),
        config.cdi_dir.clone(),
        config.limits.clone(),
    )
    .map_err(NodeError::Runtime)?
    .with_device_nodes(config.device_nodes)
    .with_compiler(config.compiler.clone())
    .with_nvml(Nvml::start(&config.host_root, &config.nvml));
    if let Some(dir) = &config.cache_dir {
        match CompileCache::open_with_budget(dir, config.cache_max_bytes) {
            Ok(cache) => runtime = runtime.with_cache(cache),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "compiled-guest cache refused; guests are compiled at every start until --cache-dir names a directory of the host's own"
            ),
        }
    }
    if let Some(keys) = &config.trusted_keys {
        let keys = TrustedKeys::read(keys).map_err(NodeError::TrustedKeys)?;
        runtime = runtime.with_trusted_keys(keys);
    }
    Ok(runtime)
}

/// The running host.
pub struct Node {
    status: watch::Receiver<Status>,
    stats: Arc<LoadStats>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    ops_addr: Option<std::net::SocketAddr>,
}

impl Node {
    /// Loads every guest and starts serving; returns once the initial load is done.
    /// Bad guests and invalid resources are logged, recorded in [`Node::skipped`], and
    /// left out; the rest serve.
    pub async fn start(config: HostConfig) -> Result<Node, NodeError> {
        let runtime = runtime(&config)?;
        // Fail early on an unreadable directory; later scans only log.
        std::fs::read_dir(&config.guests_dir).map_err(|source| NodeError::GuestsDir {
            dir: config.guests_dir.clone(),
            source,
        })?;
        remove_stale_sockets(&config.kubelet).await;
        let stats = runtime.stats();
        let (status_tx, status) = watch::channel(Status::default());
        let (shutdown, stop) = watch::channel(false);
        let mut supervisor = Supervisor::new(config.clone(), runtime, status_tx, stop.clone());
        // Guests load concurrently, each on its own task; start-up waits for every
        // first try (a failed one is retried later without holding the others), but no
        // longer than INITIAL_LOAD_WAIT: a guest still compiling then finishes on its
        // own while the probes and the other guests' registrations go ahead.
        let deadline = tokio::time::Instant::now() + INITIAL_LOAD_WAIT;
        for loaded in supervisor.sync().await {
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                tracing::warn!(
                    "a guest is still loading after {INITIAL_LOAD_WAIT:?}; starting without waiting for it"
                );
                break;
            }
        }
        supervisor.publish();
        if status.borrow().resources.is_empty() {
            tracing::warn!(
                dir = %config.guests_dir.display(),
                "no resource is being served; put <name>.wasm guests with their <name>.policy.json in the guests directory"
            );
        }
        let mut tasks = vec![tokio::spawn(supervisor.run())];
        let mut ops_addr = None;
        if let Some(addr) = config.metrics_addr {
            let listener = ops::bind(addr)
                .await
                .map_err(|source| NodeError::Ops { addr, source })?;
            ops_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(ops::serve(
                listener,
                status.clone(),
                stop.clone(),
            )));
        }
        if let Some(pod_resources) = config.pod_resources.clone() {
            let served = status.clone();
            tasks.push(tokio::spawn(pod_resources::watch_releases(
                pod_resources,
                move || served.borrow().resources.clone(),
                stop,
            )));
        }
        Ok(Node {
            status,
            stats,
            shutdown,
            tasks,
            ops_addr,
        })
    }

    /// The resources being served.
    pub fn resources(&self) -> Vec<Arc<ResourceService>> {
        self.status.borrow().resources.clone()
    }

    /// Guest files and resources that are refused, with reasons.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.status.borrow().skipped.clone()
    }

    /// The current status; subscribe to follow reloads.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The kubelet's view of every served resource (what `/readyz` reports).
    pub fn readiness(&self) -> Arc<Readiness> {
        self.status.borrow().readiness.clone()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops_addr
    }

    /// How many guests were compiled and how many came from the cache.
    pub fn load_stats(&self) -> &LoadStats {
        &self.stats
    }

    /// Stops every plug-in (ending the kubelet's streams) and removes their sockets.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a host task ended abnormally");
            }
        }
    }
}

/// An earlier run killed before it could clean up (SIGKILL, OOM) left its sockets; the
/// kubelet would keep them until its own restart. Only this host's are removed.
async fn remove_stale_sockets(kubelet: &crate::kubelet::KubeletConfig) {
    let mut dirs = vec![kubelet.device_plugin_dir.clone()];
    if let crate::kubelet::RegistrationMode::PluginWatcher { registry_dir } = &kubelet.mode {
        dirs.push(registry_dir.clone());
    }
    for dir in dirs {
        let removed = crate::kubelet::socket::remove_stale(&dir).await;
        if !removed.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                sockets = ?removed,
                "removed sockets an earlier run of this host left behind"
            );
        }
    }
}
