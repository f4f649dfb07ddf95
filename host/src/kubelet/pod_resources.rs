//! Release detection: the device plug-in API has no "deallocate", so the host polls the
//! kubelet's pod-resources API and tells a resource's guest when device IDs are no
//! longer assigned to any container (a pod ended), so that it can clean up or reset
//! them before the next tenant.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kubelet_api::podresources as pr;
use tokio::sync::watch;

use super::dial::unix_channel;
use super::registration::error_chain;
use crate::resource::ResourceService;
use crate::shutdown;

/// Where the pod-resources API is and how often to ask it.
#[derive(Debug, Clone)]
pub struct PodResourcesConfig {
    /// The kubelet's pod-resources socket.
    pub socket: PathBuf,
    /// Time between polls; a release is reported within one interval.
    pub interval: Duration,
}

impl Default for PodResourcesConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(pr::SOCKET),
            interval: Duration::from_secs(5),
        }
    }
}

/// Device IDs assigned to any container, per resource.
type Assigned = HashMap<String, BTreeSet<String>>;

/// Polls until shutdown; `services` yields the resources being served at each poll.
pub async fn watch_releases(
    config: PodResourcesConfig,
    services: impl Fn() -> Vec<Arc<ResourceService>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut before: Option<Assigned> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown::requested(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let now = match assigned(&config).await {
            Ok(now) => now,
            Err(error) => {
                // Unknown is not released: keep the last view until the kubelet answers.
                if !failing {
                    tracing::warn!(socket = %config.socket.display(), %error, "cannot read the kubelet's pod resources; release detection waits until it can");
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            tracing::info!("pod resources readable again; release detection resumed");
            failing = false;
        }
        if let Some(before) = &before {
            for service in services() {
                if !service.handles_release() {
                    continue;
                }
                let empty = BTreeSet::new();
                let was = before.get(service.name()).unwrap_or(&empty);
                let is = now.get(service.name()).unwrap_or(&empty);
                let released: Vec<String> = was.difference(is).cloned().collect();
                if released.is_empty() {
                    continue;
                }
                if let Err(error) = service.release(released.clone()).await {
                    tracing::warn!(resource = %service.name(), ?released, %error, "the guest's release hook failed");
                }
            }
        }
        before = Some(now);
    }
}

/// One `List` of the pod-resources API, reduced to the device IDs per resource.
async fn assigned(config: &PodResourcesConfig) -> Result<Assigned, String> {
    let channel = unix_channel(&config.socket, Duration::from_secs(5))
        .await
        .map_err(|e| error_chain(&e))?;
    let mut client = pr::pod_resources_lister_client::PodResourcesListerClient::new(channel);
    let mut request = tonic::Request::new(pr::ListPodResourcesRequest {});
    request.set_timeout(Duration::from_secs(10));
    let pods = client
        .list(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner()
        .pod_resources;
    let mut assigned = Assigned::new();
    for device in pods
        .iter()
        .flat_map(|p| &p.containers)
        .flat_map(|c| &c.devices)
    {
        assigned
            .entry(device.resource_name.clone())
            .or_default()
            .extend(device.device_ids.iter().cloned());
    }
    Ok(assigned)
}
