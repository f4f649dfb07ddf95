//! One guest's own task: it loads and reloads the guest, keeps a device plug-in running
//! per resource the guest owns, re-enumerates them on its own interval, and retries a
//! failed load with back-off. Guests are independent: a guest that compiles slowly,
//! uses its whole enumerate deadline on every rescan or keeps failing to load delays
//! only itself, never another guest's health changes or registrations.
//!
//! A changed guest is loaded and checked completely (signature, compile, link,
//! `configure`, `resources`) before anything is swapped; on failure the previous version
//! keeps serving. A swap replaces the backend under each resource, so the kubelet keeps
//! its registration and stream, and calls in flight finish on the old instance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::feature_files::FeatureFile;
use super::guests_dir::{self, Fingerprint, GuestFiles};
use super::ownership::{Claims, Owner};
use super::status_board::{GuestReport, StatusBoard};
use super::{Skipped, supervisor::MAX_RESOURCES_PER_GUEST};
use crate::device::ResourceSpec;
use crate::handout::node_labels;
use crate::kubelet::plugin;
use crate::metrics::metrics;
use crate::node::HostConfig;
use crate::policy::{self, GuestPolicy};
use crate::resource::{ResourceService, name};
use crate::runtime::{Guest, Runtime};
use crate::shutdown;

/// First wait before a failed load is tried again; it doubles up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a failed load.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// What the supervisor asks of a guest's task.
pub(super) struct LoadRequest {
    pub files: GuestFiles,
    pub claims: Claims,
    /// Answered once this load has been tried (the initial load at start waits on it).
    pub done: Option<oneshot::Sender<()>>,
}

/// The supervisor's handle on a guest's task.
pub(super) struct GuestTaskHandle {
    pub requests: mpsc::UnboundedSender<LoadRequest>,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<()>,
    /// The files and claims last sent, so that unchanged guests are not reloaded.
    pub sent: Option<(Fingerprint, Claims)>,
}

impl GuestTaskHandle {
    /// Starts the task of guest `name`.
    pub fn spawn(
        name: &str,
        config: HostConfig,
        runtime: Arc<Runtime>,
        board: StatusBoard,
        host_stop: watch::Receiver<bool>,
    ) -> Self {
        let (requests, inbox) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let feature_file = config
            .features_dir
            .as_ref()
            .map(|dir| FeatureFile::new(&config.host_root, dir, name));
        let task = GuestTask {
            name: name.to_owned(),
            config,
            runtime,
            board,
            loaded: None,
            current: None,
            served: BTreeMap::new(),
            retry: None,
            feature_file,
            labels_refused: Vec::new(),
        };
        let task = tokio::spawn(task.run(inbox, stopped, host_stop));
        Self {
            requests,
            stop,
            task,
            sent: None,
        }
    }

    /// Stops the task, which deregisters the guest's resources, and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "a guest task ended abnormally");
        }
    }
}

/// A resource with its running device plug-in.
struct Served {
    service: Arc<ResourceService>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A failed load waiting to be tried again.
struct Retry {
    files: GuestFiles,
    claims: Claims,
    attempts: u32,
    at: Instant,
}

struct GuestTask {
    name: String,
    config: HostConfig,
    runtime: Arc<Runtime>,
    board: StatusBoard,
    /// The files the serving version was loaded from.
    loaded: Option<Fingerprint>,
    /// The serving version.
    current: Option<Guest>,
    served: BTreeMap<String, Served>,
    retry: Option<Retry>,
    /// Where the guest's node labels go (none: not published).
    feature_file: Option<FeatureFile>,
    /// The refusals last logged, so that an unchanged refusal is logged once.
    labels_refused: Vec<String>,
}

impl GuestTask {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<LoadRequest>,
        mut stop: watch::Receiver<bool>,
        mut host_stop: watch::Receiver<bool>,
    ) {
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.reset();
        loop {
            let retry_at = self.retry.as_ref().map(|r| r.at);
            tokio::select! {
                _ = shutdown::requested(&mut stop) => break,
                _ = shutdown::requested(&mut host_stop) => break,
                request = inbox.recv() => match request {
                    Some(request) => {
                        // Only the newest files count; older requests are superseded.
                        let mut request = request;
                        let mut waiting = Vec::new();
                        while let Ok(newer) = inbox.try_recv() {
                            waiting.extend(request.done.take());
                            request = newer;
                        }
                        waiting.extend(request.done.take());
                        self.retry = None;
                        tokio::select! {
                            _ = shutdown::requested(&mut stop) => break,
                            _ = shutdown::requested(&mut host_stop) => break,
                            _ = self.load(request.files, request.claims, 1) => {}
                        }
                        for done in waiting {
                            let _ = done.send(());
                        }
                    }
                    None => break,
                },
                _ = rescan.tick() => {
                    self.rescan().await;
                    self.publish_labels().await;
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    if let Some(retry) = self.retry.take() {
                        metrics().load_retry(&self.name);
                        tokio::select! {
                            _ = shutdown::requested(&mut stop) => break,
                            _ = shutdown::requested(&mut host_stop) => break,
                            _ = self.load(retry.files, retry.claims, retry.attempts + 1) => {}
                        }
                    }
                }
            }
        }
        // All at once: each may wait out a kubelet that does not close its stream.
        let mut stopping = JoinSet::new();
        for (resource, served) in std::mem::take(&mut self.served) {
            stopping.spawn(Self::stop_served(self.name.clone(), resource, served));
        }
        while stopping.join_next().await.is_some() {}
        self.board.remove(&self.name);
        // A removed guest takes its labels along; a host that stops keeps them (a
        // rollout must not strip the node's labels).
        if let (false, Some(file)) = (*host_stop.borrow(), &mut self.feature_file)
            && let Err(e) = file.remove()
        {
            tracing::warn!(guest = %self.name, error = %e, "cannot remove the guest's node-label file; remove it by hand");
        }
        if self.loaded.is_some() {
            tracing::info!(guest = %self.name, "guest stopped; its resources are deregistered");
        }
    }

    /// Loads `files` (try number `attempt`); on failure the previous version, if any,
    /// keeps serving and the load is tried again after a back-off.
    async fn load(&mut self, files: GuestFiles, claims: Claims, attempt: u32) {
        let is_reload = self.loaded.is_some();
        let (guest, notes) = match load_guest(&self.runtime, &files, &self.config, &claims).await {
            Ok(loaded) => loaded,
            Err(mut reason) => {
                let delay = retry_delay(attempt);
                if is_reload {
                    reason.push_str("; still serving the previous version");
                    tracing::error!(guest = %self.name, %reason, attempt, retry_in = ?delay, "reload refused; fix the files, or the host tries again after the delay");
                    self.board.count_reload(false);
                } else {
                    tracing::error!(guest = %self.name, %reason, attempt, retry_in = ?delay, "guest not loaded; the other guests keep serving, and this one is tried again after the delay");
                }
                reason.push_str(&format!(
                    "; tried {attempt} time{}, next try in {} s",
                    if attempt == 1 { "" } else { "s" },
                    delay.as_secs()
                ));
                let wasm = files.wasm.clone();
                self.retry = Some(Retry {
                    files,
                    claims,
                    attempts: attempt,
                    at: Instant::now() + delay,
                });
                self.publish(vec![Skipped { path: wasm, reason }], attempt);
                return;
            }
        };
        let mut skipped: Vec<Skipped> = notes
            .into_iter()
            .map(|reason| Skipped {
                path: files.wasm.clone(),
                reason,
            })
            .collect();
        let accepted = accept_resources(&files, &guest, &claims, &mut skipped);
        // Resources this guest no longer advertises or owns, or whose options changed
        // (the kubelet reads options at registration), stop; the rest switch backends.
        let previous: Vec<String> = self.served.keys().cloned().collect();
        for resource in previous {
            let keep = accepted.iter().any(|spec| {
                spec.name == resource
                    && self
                        .served
                        .get(&resource)
                        .is_some_and(|s| s.service.spec().options == spec.options)
            });
            if !keep {
                self.stop_resource(&resource).await;
            }
        }
        for spec in accepted {
            match self.served.get(&spec.name) {
                Some(served) => {
                    served
                        .service
                        .replace_backend(Arc::new(guest.clone()), guest.grant().clone());
                    served.service.refresh().await;
                }
                None => self.serve(&guest, spec).await,
            }
        }
        if is_reload {
            tracing::info!(guest = %self.name, "guest reloaded; its resources keep their registrations");
            self.board.count_reload(true);
        }
        self.loaded = Some(files.fingerprint);
        self.current = Some(guest);
        self.publish(skipped, 0);
        self.publish_labels().await;
    }

    /// Asks the serving guest for its node labels and writes those its policy allows.
    /// A failing call leaves the published labels as they are (a guest that briefly
    /// cannot read the node must not unlabel it).
    async fn publish_labels(&mut self) {
        let (Some(guest), Some(file)) = (&self.current, &mut self.feature_file) else {
            return;
        };
        if !guest.publishes_labels() {
            return;
        }
        let proposed = match guest.labels().await {
            Ok(labels) => labels,
            Err(e) => {
                tracing::warn!(guest = %self.name, error = %e, "the guest's node labels could not be read; the published ones stay");
                return;
            }
        };
        let checked = node_labels::check(proposed, guest.grant());
        if checked.refused != self.labels_refused {
            for reason in &checked.refused {
                tracing::warn!(guest = %self.name, %reason, "node label refused; grant its prefix in the guest's policy (labelPrefixes) if it is wanted");
            }
            self.labels_refused = checked.refused.clone();
        }
        match file.publish(&self.name, &checked) {
            Ok(true) => {
                tracing::info!(guest = %self.name, labels = checked.accepted.len(), file = %file.name(), "node labels published for Node Feature Discovery")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(guest = %self.name, error = %e, "cannot write the node-label file; check that --features-dir is mounted writable")
            }
        }
    }

    async fn serve(&mut self, guest: &Guest, spec: ResourceSpec) {
        let service = Arc::new(ResourceService::new(
            spec.clone(),
            Arc::new(guest.clone()),
            self.config.node_root(),
            guest.grant().clone(),
        ));
        service.refresh().await;
        tracing::info!(
            guest = %self.name,
            resource = %spec.name,
            devices = service.current().devices().len(),
            "resource ready"
        );
        let (stop, stopped) = watch::channel(false);
        let readiness = plugin::track(
            &self.board.readiness(),
            &self.name,
            &self.config.kubelet,
            &spec.name,
        );
        let task = tokio::spawn(plugin::run(
            service.clone(),
            self.config.kubelet.clone(),
            readiness,
            stopped,
        ));
        self.served.insert(
            spec.name,
            Served {
                service,
                stop,
                task,
            },
        );
    }

    /// Deregisters a resource: its server stops, the kubelet's stream ends, the socket goes.
    async fn stop_resource(&mut self, resource: &str) {
        if let Some(served) = self.served.remove(resource) {
            Self::stop_served(self.name.clone(), resource.to_owned(), served).await;
        }
    }

    async fn stop_served(guest: String, resource: String, served: Served) {
        let _ = served.stop.send(true);
        if let Err(e) = served.task.await {
            tracing::warn!(resource, error = %e, "device plug-in task ended abnormally");
        }
        tracing::info!(resource, %guest, "resource deregistered");
    }

    /// Re-enumerates this guest's resources concurrently; only changes reach the kubelet.
    async fn rescan(&self) {
        let mut refreshes = JoinSet::new();
        for served in self.served.values() {
            let service = served.service.clone();
            refreshes.spawn(async move { service.refresh().await });
        }
        while refreshes.join_next().await.is_some() {}
    }

    /// Tells the board what this guest serves and what was refused.
    fn publish(&self, skipped: Vec<Skipped>, failed_attempts: u32) {
        let report = GuestReport {
            resources: self.served.values().map(|s| s.service.clone()).collect(),
            skipped,
            failed_attempts,
        };
        self.board.set(&self.name, report);
    }
}

/// How long to wait after the `attempt`-th failed try: 1 s, 2 s, 4 s ... 5 min.
pub fn retry_delay(attempt: u32) -> Duration {
    let doubled = FIRST_RETRY_DELAY.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    doubled.min(MAX_RETRY_DELAY)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_five_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(40), MAX_RETRY_DELAY);
    }
}
