//! Release detection: the device plug-in API has no "deallocate", so the host polls the
//! kubelet's pod-resources API and tells a resource's guest when a container's hold on
//! a device ended (its pod ended), so that the guest can clean up after that tenant.
//!
//! What polling can promise, and what it cannot:
//! - Every ended assignment is reported, one poll interval after the kubelet stops
//!   listing it, also when the device was handed to a new pod within that interval:
//!   assignments are compared as (pod, container, device), not as bare device IDs.
//! - A release the guest fails is tried again at the next polls, up to
//!   [`MAX_RELEASE_ATTEMPTS`] times, then given up with a warning.
//! - It cannot promise that the release comes before the next tenant starts: the
//!   kubelet may start a new container on the device before the next poll. A reset
//!   that must happen before a tenant belongs in `PreStartContainer`, which the kubelet
//!   calls before every container start; the release hook is for bookkeeping and clean-up
//!   that does not disturb a device that may already be in use again.
//! - An unreachable API releases nothing (unknown is not released), and records ending
//!   while the host is down are not reported after its restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// One container's hold on one device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Assignment {
    namespace: String,
    pod: String,
    container: String,
    device: String,
}

/// The assignments the kubelet reports, per resource.
type Assigned = HashMap<String, BTreeSet<Assignment>>;

/// How often a release the guest refuses is tried again before it is given up.
pub const MAX_RELEASE_ATTEMPTS: u32 = 5;
/// Longest one poll may take (dial and `List`): a kubelet that accepts the connection
/// and never answers must not stall release detection, nor the host's shutdown.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Releases not yet accepted by a guest: per resource, device ID → failed attempts.
#[derive(Debug, Default)]
struct Pending(HashMap<String, BTreeMap<String, u32>>);

impl Pending {
    fn add(&mut self, resource: &str, devices: impl IntoIterator<Item = String>) {
        let entry = self.0.entry(resource.to_owned()).or_default();
        for device in devices {
            entry.entry(device).or_insert(0);
        }
    }

    fn ids(&self, resource: &str) -> Vec<String> {
        self.0
            .get(resource)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn done(&mut self, resource: &str) {
        self.0.remove(resource);
    }

    /// Counts a failed attempt; returns the IDs given up on.
    fn failed(&mut self, resource: &str) -> Vec<String> {
        let Some(devices) = self.0.get_mut(resource) else {
            return Vec::new();
        };
        let mut given_up = Vec::new();
        devices.retain(|device, attempts| {
            *attempts += 1;
            let keep = *attempts < MAX_RELEASE_ATTEMPTS;
            if !keep {
                given_up.push(device.clone());
            }
            keep
        });
        if devices.is_empty() {
            self.0.remove(resource);
        }
        given_up
    }
}

/// The devices of assignments in `before` that are not in `now`, per resource.
fn ended(before: &Assigned, now: &Assigned) -> BTreeMap<String, BTreeSet<String>> {
    let empty = BTreeSet::new();
    let mut ended: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (resource, was) in before {
        let is = now.get(resource).unwrap_or(&empty);
        for gone in was.difference(is) {
            ended
                .entry(resource.clone())
                .or_default()
                .insert(gone.device.clone());
        }
    }
    ended
}

/// Polls until shutdown; `services` yields the resources being served at each poll.
pub async fn watch_releases(
    config: PodResourcesConfig,
    services: impl Fn() -> Vec<Arc<ResourceService>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut before: Option<Assigned> = None;
    let mut pending = Pending::default();
    let mut failing = false;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown::requested(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let poll = tokio::time::timeout(POLL_TIMEOUT, assigned(&config));
        let polled = tokio::select! {
            _ = shutdown::requested(&mut stop) => return,
            polled = poll => polled,
        };
        let now = match polled.unwrap_or_else(|_| Err(format!("no answer within {POLL_TIMEOUT:?}")))
        {
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
            for (resource, devices) in ended(before, &now) {
                pending.add(&resource, devices);
            }
        }
        before = Some(now);
        for service in services() {
            let resource = service.name().to_owned();
            let ids = pending.ids(&resource);
            if ids.is_empty() {
                continue;
            }
            if !service.handles_release() {
                pending.done(&resource);
                continue;
            }
            let outcome = tokio::select! {
                _ = shutdown::requested(&mut stop) => return,
                outcome = service.release(ids.clone()) => outcome,
            };
            match outcome {
                Ok(()) => pending.done(&resource),
                Err(error) => {
                    let given_up = pending.failed(&resource);
                    if given_up.is_empty() {
                        tracing::warn!(%resource, released = ?ids, %error, "the guest's release hook failed; it is tried again at the next poll");
                    } else {
                        tracing::error!(%resource, released = ?given_up, %error, attempts = MAX_RELEASE_ATTEMPTS, "the guest's release hook keeps failing; giving up on these devices (check the guest's log and its write grant)");
                    }
                }
            }
        }
    }
}

/// One `List` of the pod-resources API, reduced to the assignments per resource.
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
    for pod in &pods {
        for container in &pod.containers {
            for devices in &container.devices {
                let held = assigned.entry(devices.resource_name.clone()).or_default();
                for device in &devices.device_ids {
                    held.insert(Assignment {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        container: container.name.clone(),
                        device: device.clone(),
                    });
                }
            }
        }
    }
    Ok(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(entries: &[(&str, &str, &str)]) -> Assigned {
        let mut assigned = Assigned::new();
        for (pod, resource, device) in entries {
            assigned
                .entry(resource.to_string())
                .or_default()
                .insert(Assignment {
                    namespace: "default".into(),
                    pod: pod.to_string(),
                    container: "main".into(),
                    device: device.to_string(),
                });
        }
        assigned
    }

    #[test]
    fn a_device_handed_to_a_new_pod_within_one_poll_is_still_released() {
        let before = held(&[("a", "r", "d0"), ("a", "r", "d1"), ("b", "r", "d2")]);
        // Pod a ended; d0 went to pod c before the next poll.
        let now = held(&[("c", "r", "d0"), ("b", "r", "d2")]);
        let ended = ended(&before, &now);
        assert_eq!(
            ended
                .get("r")
                .map(|s| s.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["d0".to_string(), "d1".to_string()])
        );
        assert!(super::ended(&now, &now).is_empty());
    }

    #[test]
    fn failed_releases_are_kept_until_they_succeed_or_run_out_of_attempts() {
        let mut pending = Pending::default();
        pending.add("r", ["d0".to_string()]);
        for _ in 1..MAX_RELEASE_ATTEMPTS {
            assert!(pending.failed("r").is_empty());
            assert_eq!(pending.ids("r"), ["d0"]);
        }
        pending.add("r", ["d1".to_string()]);
        assert_eq!(pending.failed("r"), ["d0"]);
        assert_eq!(pending.ids("r"), ["d1"]);
        pending.done("r");
        assert!(pending.ids("r").is_empty());
    }
}
