//! The one task that owns the node's guests and resources: it loads, reloads and
//! unloads guests as the guests directory changes, keeps one device plug-in running per
//! accepted resource, and re-enumerates devices on an interval.
//!
//! A changed guest is loaded and checked completely (signature, compile, link,
//! `configure`, `resources`) before anything is swapped; on failure the previous version
//! keeps serving. A swap replaces the backend under each resource, so the kubelet keeps
//! its registration and stream, and calls in flight finish on the old instance.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::guests_dir::{self, Fingerprint, GuestFiles};
use super::ownership::{Claims, Owner};
use super::{Skipped, Status};
use crate::config::HostConfig;
use crate::config::policy::{self, GuestPolicy};
use crate::device::ResourceSpec;
use crate::kubelet::plugin;
use crate::metrics::metrics;
use crate::resource::{ResourceService, name};
use crate::runtime::{Guest, Runtime};
use crate::shutdown;

/// A resource with its running device plug-in.
struct Served {
    service: Arc<ResourceService>,
    guest: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub(super) struct Supervisor {
    config: HostConfig,
    runtime: Runtime,
    /// Serving guests and the files they were loaded from (the `Guest` handles live in
    /// their resources' services).
    guests: BTreeMap<String, Fingerprint>,
    /// Files of guests whose last load failed, so they are retried only when they change.
    failed: BTreeMap<String, Fingerprint>,
    served: BTreeMap<String, Served>,
    skipped: BTreeMap<String, Vec<Skipped>>,
    /// What every policy in the directory claims, as of the last scan.
    claims: Claims,
    status: watch::Sender<Status>,
}

/// Most resources one guest may advertise: each is a socket, a registration and a field
/// in the Node's status.
pub const MAX_RESOURCES_PER_GUEST: usize = 16;

impl Supervisor {
    pub(super) fn new(config: HostConfig, runtime: Runtime, status: watch::Sender<Status>) -> Self {
        Self {
            config,
            runtime,
            guests: BTreeMap::new(),
            failed: BTreeMap::new(),
            served: BTreeMap::new(),
            skipped: BTreeMap::new(),
            claims: Claims::default(),
            status,
        }
    }

    /// Reloads on changes and re-enumerates until shutdown, then stops every plug-in.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        let mut reload = tokio::time::interval(self.config.reload_interval);
        for tick in [&mut rescan, &mut reload] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.reset();
        }
        loop {
            tokio::select! {
                _ = shutdown::requested(&mut stop) => break,
                _ = rescan.tick() => self.rescan().await,
                _ = reload.tick() => self.sync().await,
            }
        }
        let names: Vec<String> = self.served.keys().cloned().collect();
        for resource in names {
            self.stop(&resource).await;
        }
    }

    /// Brings the served guests in line with the guests directory.
    pub(super) async fn sync(&mut self) {
        let found = match guests_dir::scan(&self.config.guests_dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the guests directory; keeping what is loaded");
                return;
            }
        };
        let claims = Claims::of(&found, &self.config.limits);
        let reclaimed = claims != self.claims;
        if reclaimed && !self.guests.is_empty() {
            tracing::info!(
                "the policies changed which guest owns which names; checking every guest again"
            );
        }
        self.claims = claims;
        let present: BTreeSet<&str> = found.iter().map(|g| g.name.as_str()).collect();
        let gone: Vec<String> = self
            .guests
            .keys()
            .chain(self.failed.keys())
            .filter(|name| !present.contains(name.as_str()))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for name in gone {
            self.unload(&name).await;
        }
        for files in found {
            let unchanged = !reclaimed
                && (self.guests.get(&files.name) == Some(&files.fingerprint)
                    || self.failed.get(&files.name) == Some(&files.fingerprint));
            if !unchanged {
                self.load(files).await;
                changed = true;
            }
        }
        if changed || self.status.borrow().generation == 0 {
            self.publish();
        }
    }

    async fn load(&mut self, files: GuestFiles) {
        let name = files.name.clone();
        let is_reload = self.guests.contains_key(&name);
        let (guest, notes) = match load_guest(&self.runtime, &files, &self.config, &self.claims)
            .await
        {
            Ok(loaded) => loaded,
            Err(mut reason) => {
                if is_reload {
                    reason.push_str("; still serving the previous version");
                    tracing::error!(guest = %name, %reason, "reload refused; fix the files and the host tries again");
                    self.status.send_modify(|s| s.reloads_refused += 1);
                    metrics().reload(false);
                } else {
                    tracing::error!(guest = %name, %reason, "guest skipped; fix or remove the files, the other guests keep serving");
                }
                self.skipped.insert(
                    name.clone(),
                    vec![Skipped {
                        path: files.wasm,
                        reason,
                    }],
                );
                self.failed.insert(name, files.fingerprint);
                return;
            }
        };
        self.failed.remove(&name);

        let mut skipped: Vec<Skipped> = notes
            .into_iter()
            .map(|reason| Skipped {
                path: files.wasm.clone(),
                reason,
            })
            .collect();
        let accepted = accept_resources(&files, &guest, &self.claims, &mut skipped);
        // Resources this guest no longer advertises, or whose options changed (the
        // kubelet reads options at registration), stop; the rest switch backends.
        let previous: Vec<String> = self
            .served
            .iter()
            .filter(|(_, s)| s.guest == name)
            .map(|(resource, _)| resource.clone())
            .collect();
        for resource in previous {
            let keep = accepted.iter().any(|spec| {
                spec.name == resource
                    && self
                        .served
                        .get(&resource)
                        .is_some_and(|s| s.service.spec().options == spec.options)
            });
            if !keep {
                self.stop(&resource).await;
            }
        }
        for spec in accepted {
            // A name that changed owners (the policies changed) leaves its old guest.
            if self.served.get(&spec.name).is_some_and(|s| s.guest != name) {
                self.stop(&spec.name).await;
            }
            match self.served.get(&spec.name) {
                Some(served) => {
                    served
                        .service
                        .replace_backend(Arc::new(guest.clone()), guest.grant().clone());
                    served.service.refresh().await;
                }
                None => self.serve(&name, &guest, spec).await,
            }
        }
        if is_reload {
            tracing::info!(guest = %name, "guest reloaded; its resources keep their registrations");
            self.status.send_modify(|s| s.reloads_ok += 1);
            metrics().reload(true);
        }
        self.skipped.insert(name.clone(), skipped);
        self.guests.insert(name, files.fingerprint);
    }

    async fn serve(&mut self, guest_name: &str, guest: &Guest, spec: ResourceSpec) {
        let service = Arc::new(ResourceService::new(
            spec.clone(),
            Arc::new(guest.clone()),
            self.config.node_root(),
            guest.grant().clone(),
        ));
        service.refresh().await;
        tracing::info!(
            guest = guest_name,
            resource = %spec.name,
            devices = service.current().devices().len(),
            "resource ready"
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(plugin::run(
            service.clone(),
            self.config.kubelet.clone(),
            stopped,
        ));
        self.served.insert(
            spec.name,
            Served {
                service,
                guest: guest_name.to_owned(),
                stop,
                task,
            },
        );
    }

    /// Deregisters a resource: its server stops, the kubelet's stream ends, the socket goes.
    async fn stop(&mut self, resource: &str) {
        if let Some(served) = self.served.remove(resource) {
            let _ = served.stop.send(true);
            if let Err(e) = served.task.await {
                tracing::warn!(resource, error = %e, "device plug-in task ended abnormally");
            }
            tracing::info!(resource, guest = %served.guest, "resource deregistered");
        }
    }

    async fn unload(&mut self, name: &str) {
        let resources: Vec<String> = self
            .served
            .iter()
            .filter(|(_, s)| s.guest == name)
            .map(|(r, _)| r.clone())
            .collect();
        for resource in resources {
            self.stop(&resource).await;
        }
        if self.guests.remove(name).is_some() {
            tracing::info!(
                guest = name,
                "guest removed from the guests directory; its resources are deregistered"
            );
        }
        self.failed.remove(name);
        self.skipped.remove(name);
    }

    /// Re-enumerates every resource concurrently; only changes reach the kubelet.
    async fn rescan(&self) {
        let mut refreshes = JoinSet::new();
        for served in self.served.values() {
            let service = served.service.clone();
            refreshes.spawn(async move { service.refresh().await });
        }
        while refreshes.join_next().await.is_some() {}
    }

    fn publish(&self) {
        let resources = self.served.values().map(|s| s.service.clone()).collect();
        let skipped = self.skipped.values().flatten().cloned().collect();
        self.status.send_modify(|status| {
            status.resources = resources;
            status.skipped = skipped;
            status.generation += 1;
        });
    }
}

/// The guest's resources that may be registered (valid names, within the policy's
/// prefixes, owned by this guest under `claims`, advertised once, at most
/// [`MAX_RESOURCES_PER_GUEST`]); the others go to `skipped`.
pub(super) fn accept_resources(
    files: &GuestFiles,
    guest: &Guest,
    claims: &Claims,
    skipped: &mut Vec<Skipped>,
) -> Vec<ResourceSpec> {
    let path = files.wasm.display();
    let mut accepted: Vec<ResourceSpec> = Vec::new();
    for spec in guest.resources() {
        let refusal = if let Err(e) = name::validate(&spec.name) {
            Some(format!("{path}: {e}"))
        } else if !guest.grant().allows_resource(&spec.name) {
            Some(format!(
                "{path}: resource {} is outside the prefixes its policy grants ({})",
                spec.name,
                guest.grant().resource_prefixes.join(", ")
            ))
        } else if let Some(why) = not_owned(claims, &files.name, &spec.name) {
            Some(format!("{path}: resource {}: {why}", spec.name))
        } else if accepted.len() == MAX_RESOURCES_PER_GUEST {
            Some(format!(
                "{path}: resource {}: a guest may advertise at most {MAX_RESOURCES_PER_GUEST} resources",
                spec.name
            ))
        } else if accepted.iter().any(|a| a.name == spec.name) {
            Some(format!(
                "{path}: resource {} is advertised twice",
                spec.name
            ))
        } else {
            None
        };
        match refusal {
            Some(reason) => {
                tracing::error!(guest = %files.name, %reason, "resource not registered; correct the guest's configuration or policy");
                skipped.push(Skipped {
                    path: files.wasm.clone(),
                    reason,
                });
            }
            None => accepted.push(spec.clone()),
        }
    }
    accepted
}

/// Why `guest` may not serve `resource` under `claims`, if it may not.
fn not_owned(claims: &Claims, guest: &str, resource: &str) -> Option<String> {
    match claims.owner_of(resource) {
        Owner::Guest(owner) if owner == guest => None,
        Owner::Guest(owner) => Some(format!(
            "the policy of guest {owner} grants it more specifically; it is {owner}'s"
        )),
        Owner::Contested { prefix, guests } => Some(format!(
            "the policies of guests {} all grant it (prefix {prefix}), so none of them serves it; narrow all but one policy",
            guests.join(", ")
        )),
        Owner::Nobody => Some("no policy grants it".to_owned()),
    }
}

/// Loads one guest with its policy and configuration. A guest without a policy is not
/// loaded: guests are denied everything by default. CDI kinds that another policy
/// grants too are taken out of this guest's grant; the notes say which.
pub(super) async fn load_guest(
    runtime: &Runtime,
    files: &GuestFiles,
    config: &HostConfig,
    claims: &Claims,
) -> Result<(Guest, Vec<String>), String> {
    let path = &files.wasm;
    let mut policy = GuestPolicy::for_guest(path, &config.limits)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{}: no policy {} beside it; guests are denied everything by default, so say what it may read, hand out and advertise",
                path.display(),
                policy::policy_path(path).display()
            )
        })?;
    let mut notes = Vec::new();
    for (kind, others) in claims.contested_kinds(&files.name) {
        policy.grant.cdi_kinds.retain(|k| k != &kind);
        let reason = format!(
            "{}: CDI kind {kind} is granted to guests {} as well, so none of them may write it; narrow all but one policy",
            path.display(),
            others.join(", ")
        );
        tracing::error!(guest = %files.name, %reason, "CDI kind withheld");
        notes.push(reason);
    }
    let guest_config = guests_dir::read_config(path)?;
    let guest = runtime
        .load(&files.name, path, guest_config, policy)
        .await
        .map_err(|e| e.to_string())?;
    Ok((guest, notes))
}
