//! Assembles the layers for one node: loads the guests, builds a resource service per
//! advertised resource, and starts its device plug-in and re-enumeration tasks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::HostConfig;
use crate::config::policy::{self, GuestPolicy};
use crate::kubelet::plugin;
use crate::resource::{ResourceService, name};
use crate::runtime::{Guest, Runtime};
use crate::shutdown;

/// Extensions of the optional configuration file beside `<name>.wasm`.
pub const CONFIG_EXTENSIONS: [&str; 4] = ["json", "yaml", "yml", "conf"];

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
}

/// A guest file that was not loaded, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// The running host.
pub struct Node {
    resources: Vec<Arc<ResourceService>>,
    skipped: Vec<Skipped>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Node {
    /// Loads every guest and starts serving. Bad guests and invalid resources are
    /// logged, recorded in [`Node::skipped`], and left out; the rest serve.
    pub async fn start(config: HostConfig) -> Result<Node, NodeError> {
        let runtime = Runtime::new(
            config.host_root.clone(),
            config.cdi_dir.clone(),
            config.limits.clone(),
        )
        .map_err(NodeError::Runtime)?;
        let (shutdown, _) = watch::channel(false);
        let mut node = Node {
            resources: Vec::new(),
            skipped: Vec::new(),
            shutdown,
            tasks: JoinSet::new(),
        };
        let mut names = HashSet::new();
        for path in guest_files(&config.guests_dir)? {
            let guest = match load(&runtime, &path, &config).await {
                Ok(guest) => guest,
                Err(reason) => {
                    tracing::error!(guest = %path.display(), %reason, "guest skipped; fix or remove the file, the other guests keep serving");
                    node.skipped.push(Skipped { path, reason });
                    continue;
                }
            };
            let mut services = Vec::new();
            for spec in guest.resources() {
                if let Err(e) = name::validate(&spec.name) {
                    tracing::error!(guest = guest.name(), error = %e, "resource not registered; correct the name in the guest's configuration");
                    node.skipped.push(Skipped {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
                if !guest.grant().allows_resource(&spec.name) {
                    let reason = format!(
                        "{}: resource {} is outside the prefixes its policy grants ({})",
                        path.display(),
                        spec.name,
                        guest.grant().resource_prefixes.join(", ")
                    );
                    tracing::error!(guest = guest.name(), %reason, "resource not registered; widen resourcePrefixes in the guest's policy if this is intended");
                    node.skipped.push(Skipped {
                        path: path.clone(),
                        reason,
                    });
                    continue;
                }
                if !names.insert(spec.name.clone()) {
                    let reason =
                        format!("resource {} is already served by another guest", spec.name);
                    tracing::error!(guest = guest.name(), %reason, "resource not registered");
                    node.skipped.push(Skipped {
                        path: path.clone(),
                        reason,
                    });
                    continue;
                }
                let backend = Arc::new(guest.clone());
                let service = Arc::new(ResourceService::new(
                    spec.clone(),
                    backend,
                    config.host_root.clone(),
                    guest.grant().clone(),
                ));
                service.refresh().await;
                tracing::info!(
                    guest = guest.name(),
                    resource = %spec.name,
                    devices = service.current().devices().len(),
                    "resource ready"
                );
                services.push(service);
            }
            for service in &services {
                node.tasks.spawn(plugin::run(
                    service.clone(),
                    config.kubelet.clone(),
                    node.shutdown.subscribe(),
                ));
            }
            if !services.is_empty() {
                node.tasks.spawn(rescan(
                    services.clone(),
                    config.rescan_interval,
                    node.shutdown.subscribe(),
                ));
            }
            node.resources.extend(services);
        }
        if node.resources.is_empty() {
            tracing::warn!(dir = %config.guests_dir.display(), "no resource is being served; put <name>.wasm guests in the guests directory");
        }
        Ok(node)
    }

    /// The resources being served.
    pub fn resources(&self) -> &[Arc<ResourceService>] {
        &self.resources
    }

    /// Guest files and resources that were refused, with reasons.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Stops every plug-in (ending the kubelet's streams) and removes their sockets.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Loads one guest with its policy and configuration. A guest without a policy is not
/// loaded: guests are denied everything by default.
async fn load(runtime: &Runtime, path: &Path, config: &HostConfig) -> Result<Guest, String> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: the file name is not UTF-8", path.display()))?;
    let policy = GuestPolicy::for_guest(path, &config.limits)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{}: no policy {} beside it; guests are denied everything by default, so say what it may read, hand out and advertise",
                path.display(),
                policy::policy_path(path).display()
            )
        })?;
    let guest_config = read_config(path)?;
    runtime
        .load(name, path, guest_config, policy)
        .await
        .map_err(|e| e.to_string())
}

/// `<name>.wasm` files of `dir`, sorted. Hidden entries (a ConfigMap volume's `..data`
/// and timestamped directories) are skipped; symbolic links are followed.
fn guest_files(dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let entries = std::fs::read_dir(dir).map_err(|source| NodeError::GuestsDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.') && p.extension().is_some_and(|x| x == "wasm") && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The operator's configuration for `guest.wasm`: the text of `guest.json`,
/// `guest.yaml`, `guest.yml` or `guest.conf`, or empty when there is none.
fn read_config(wasm: &Path) -> Result<String, String> {
    let found: Vec<PathBuf> = CONFIG_EXTENSIONS
        .iter()
        .map(|ext| wasm.with_extension(ext))
        .filter(|p| p.is_file())
        .collect();
    match found.as_slice() {
        [] => Ok(String::new()),
        [one] => std::fs::read_to_string(one).map_err(|e| {
            format!(
                "{}: cannot read the guest's configuration: {e}",
                one.display()
            )
        }),
        many => Err(format!(
            "{}: several configuration files ({}); keep one",
            wasm.display(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Re-enumerates a guest's resources on an interval; only changes reach the kubelet.
async fn rescan(
    services: Vec<Arc<ResourceService>>,
    every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown::requested(&mut shutdown) => return,
            _ = tick.tick() => {
                for service in &services {
                    service.refresh().await;
                }
            }
        }
    }
}
