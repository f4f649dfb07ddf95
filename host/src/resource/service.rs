//! One advertised resource: its device snapshot, and the checks around every call.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use thiserror::Error;
use tokio::sync::watch;

use super::backend::Backend;
use super::snapshot::Snapshot;
use crate::device::{ContainerAllocation, Health, PreferredRequest, ResourceSpec};
use crate::grant::Grant;
use crate::handout::{self, NodeRoot};
use crate::metrics::metrics;
use crate::runtime::GuestError;
use crate::runtime::error::ReportedKind;

/// Consecutive failed enumerations after which the resource's devices are reported
/// unhealthy (kept listed, so node capacity holds while allocatable drops to zero).
pub const FAILURES_BEFORE_UNHEALTHY: u32 = 3;
/// Most devices one resource may list (10,000 shared slots fit well under 4 MiB).
pub const MAX_DEVICES: usize = 16_384;

/// A refused call, classified the way the kubelet layer reports it (gRPC code).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<GuestError> for ServiceError {
    fn from(e: GuestError) -> Self {
        let message = e.to_string();
        match e {
            GuestError::Reported {
                kind: ReportedKind::InvalidArgument | ReportedKind::NotFound,
                ..
            } => ServiceError::InvalidArgument(message),
            GuestError::Deadline { .. } => ServiceError::DeadlineExceeded(message),
            GuestError::Unavailable { .. } => ServiceError::Unavailable(message),
            GuestError::Reported { .. }
            | GuestError::Trap { .. }
            | GuestError::Malformed { .. } => ServiceError::Internal(message),
        }
    }
}

/// The vendor logic behind a resource and what it is allowed, swapped as one on reload.
#[derive(Clone)]
struct Vendor {
    backend: Arc<dyn Backend>,
    grant: Arc<Grant>,
}

/// One extended resource, served from one backend.
pub struct ResourceService {
    spec: ResourceSpec,
    vendor: RwLock<Vendor>,
    root: NodeRoot,
    snapshot: watch::Sender<Snapshot>,
    failures: AtomicU32,
    /// Whether the last refresh found the backend degraded (to log transitions only).
    degraded: AtomicBool,
}

impl ResourceService {
    /// A service with an empty snapshot; call [`refresh`](Self::refresh) to fill it.
    /// Allocation answers are checked against `grant` on the node at `root`.
    pub fn new(
        spec: ResourceSpec,
        backend: Arc<dyn Backend>,
        root: impl Into<NodeRoot>,
        grant: Arc<Grant>,
    ) -> Self {
        Self {
            spec,
            vendor: RwLock::new(Vendor { backend, grant }),
            root: root.into(),
            snapshot: watch::Sender::new(Snapshot::default()),
            failures: AtomicU32::new(0),
            degraded: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Serves the resource from a new backend (a reloaded guest) from the next call on;
    /// calls in flight finish on the old one, which they hold.
    pub fn replace_backend(&self, backend: Arc<dyn Backend>, grant: Arc<Grant>) {
        let mut vendor = self.vendor.write().unwrap_or_else(|p| p.into_inner());
        *vendor = Vendor { backend, grant };
    }

    /// The backend and grant in force now.
    fn vendor(&self) -> Vendor {
        self.vendor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn spec(&self) -> &ResourceSpec {
        &self.spec
    }

    /// Receives every published snapshot; the current one is marked as seen by nobody yet.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    pub fn current(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// Asks the backend for the device list and publishes it if the kubelet would see a
    /// difference. A failing backend keeps the last list; after
    /// [`FAILURES_BEFORE_UNHEALTHY`] failures in a row the devices turn unhealthy.
    /// Returns whether a new snapshot was published.
    pub async fn refresh(&self) -> bool {
        let published = self.enumerate().await;
        let snapshot = self.snapshot.borrow();
        let healthy = snapshot
            .devices()
            .iter()
            .filter(|d| d.health == Health::Healthy)
            .count();
        metrics().set_devices(&self.spec.name, healthy, snapshot.devices().len() - healthy);
        published
    }

    async fn enumerate(&self) -> bool {
        let vendor = self.vendor();
        let listed = vendor
            .backend
            .list_devices(&self.spec.name)
            .await
            .map_err(|e| e.to_string())
            .and_then(|devices| Snapshot::new(devices, MAX_DEVICES).map_err(|e| e.to_string()));
        match listed {
            Ok(mut fresh) => {
                let degraded = vendor.backend.degraded();
                let was_degraded = self.degraded.swap(degraded.is_some(), Ordering::Relaxed);
                match &degraded {
                    Some(why) if !was_degraded => tracing::warn!(
                        resource = %self.spec.name,
                        guest = vendor.backend.name(),
                        why,
                        "reporting every device Unhealthy while the guest keeps faulting; it is offered again after a quiet period"
                    ),
                    None if was_degraded => tracing::info!(
                        resource = %self.spec.name,
                        guest = vendor.backend.name(),
                        "the guest's quiet period is over; offering its devices again"
                    ),
                    _ => {}
                }
                if degraded.is_some() {
                    fresh = fresh.all_unhealthy();
                }
                if self.failures.swap(0, Ordering::Relaxed) >= FAILURES_BEFORE_UNHEALTHY {
                    tracing::info!(resource = %self.spec.name, "device enumeration recovered");
                }
                self.snapshot.send_if_modified(|current| {
                    if fresh.differs_from(current) {
                        *current = fresh;
                        true
                    } else {
                        false
                    }
                })
            }
            Err(error) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    resource = %self.spec.name,
                    guest = vendor.backend.name(),
                    failures,
                    %error,
                    "device enumeration failed; keeping the last device list"
                );
                let listed = !self.snapshot.borrow().devices().is_empty();
                if failures == FAILURES_BEFORE_UNHEALTHY && listed {
                    tracing::error!(
                        resource = %self.spec.name,
                        guest = vendor.backend.name(),
                        "enumeration failed {failures} times in a row: reporting every device Unhealthy \
                         until it recovers; check the guest's log lines and configuration"
                    );
                    self.snapshot.send_if_modified(|current| {
                        let unhealthy = current.all_unhealthy();
                        let changed = unhealthy.differs_from(current);
                        *current = unhealthy;
                        changed
                    })
                } else {
                    false
                }
            }
        }
    }

    /// Allocates for `containers` (device IDs per container), one answer per container
    /// in order. IDs must be known and healthy; the guest's answer is checked.
    pub async fn allocate(
        &self,
        containers: Vec<Vec<String>>,
    ) -> Result<Vec<ContainerAllocation>, ServiceError> {
        let vendor = self.vendor();
        self.check_ids(containers.iter().flatten(), true)?;
        for ids in &containers {
            let mut seen = HashSet::new();
            if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
                return Err(ServiceError::InvalidArgument(format!(
                    "device ID {dup:?} is requested twice for one container of {}",
                    self.spec.name
                )));
            }
        }
        let expected = containers.len();
        let answer = vendor.backend.allocate(&self.spec.name, containers).await?;
        if answer.len() != expected {
            return Err(ServiceError::Internal(format!(
                "guest {} answered {} allocations for {expected} containers of {}",
                vendor.backend.name(),
                answer.len(),
                self.spec.name
            )));
        }
        let ledger = vendor.backend.cdi_ledger();
        for (i, allocation) in answer.iter().enumerate() {
            handout::check_allocation(allocation, &self.root, &vendor.grant, &ledger).map_err(
                |e| {
                    tracing::error!(
                        resource = %self.spec.name,
                        guest = vendor.backend.name(),
                        container = i,
                        refused = %e,
                        "allocation refused: the guest handed out what its policy does not grant; \
                         widen the policy only if the vendor's reason is sound"
                    );
                    metrics().handout_refused(vendor.backend.name());
                    ServiceError::Internal(format!(
                        "guest {} gave an allocation for {} that was refused: container {i}: {e}",
                        vendor.backend.name(),
                        self.spec.name
                    ))
                },
            )?;
        }
        Ok(answer)
    }

    /// Preferred devices per request. Never fails: where the guest fails or answers
    /// something the kubelet could not use, the answer for that container is empty and
    /// the kubelet chooses by itself.
    pub async fn preferred_allocation(&self, requests: Vec<PreferredRequest>) -> Vec<Vec<String>> {
        let vendor = self.vendor();
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            if !self.spec.options.preferred_allocation_available {
                answers.push(Vec::new());
                continue;
            }
            let answer = match vendor
                .backend
                .preferred_allocation(&self.spec.name, &request)
                .await
            {
                Ok(ids) => match check_preferred(&request, &ids) {
                    Ok(()) => ids,
                    Err(reason) => {
                        tracing::warn!(resource = %self.spec.name, guest = vendor.backend.name(), reason, "ignoring the guest's preferred allocation");
                        Vec::new()
                    }
                },
                Err(error) => {
                    tracing::warn!(resource = %self.spec.name, %error, "preferred allocation failed; the kubelet will choose");
                    Vec::new()
                }
            };
            answers.push(answer);
        }
        answers
    }

    /// Hands the container's devices to the guest before the container starts.
    pub async fn pre_start(&self, ids: Vec<String>) -> Result<(), ServiceError> {
        let vendor = self.vendor();
        if !self.spec.options.pre_start_required {
            return Ok(());
        }
        // Pre-start happens on every container (re)start, long after admission, so a
        // device that has since turned unhealthy is still the container's device.
        self.check_ids(ids.iter(), false)?;
        Ok(vendor.backend.pre_start(&self.spec.name, ids).await?)
    }

    /// Whether the vendor logic wants to hear about released devices.
    pub fn handles_release(&self) -> bool {
        self.vendor().backend.handles_release()
    }

    /// Tells the vendor logic that `ids` are no longer assigned to any container, so
    /// that it can clean up or reset them before the next tenant.
    pub async fn release(&self, ids: Vec<String>) -> Result<(), ServiceError> {
        let vendor = self.vendor();
        if !vendor.backend.handles_release() {
            return Ok(());
        }
        tracing::info!(resource = %self.spec.name, ?ids, "devices released; telling the guest");
        Ok(vendor.backend.release(&self.spec.name, ids).await?)
    }

    fn check_ids<'a>(
        &self,
        ids: impl Iterator<Item = &'a String>,
        must_be_healthy: bool,
    ) -> Result<(), ServiceError> {
        let snapshot = self.snapshot.borrow();
        let mut unknown = Vec::new();
        let mut unhealthy = Vec::new();
        for id in ids {
            match snapshot.get(id) {
                None => unknown.push(id.as_str()),
                Some(d) if must_be_healthy && d.health != Health::Healthy => {
                    unhealthy.push(id.as_str())
                }
                Some(_) => {}
            }
        }
        if !unknown.is_empty() {
            return Err(ServiceError::InvalidArgument(format!(
                "unknown device IDs for {}: {}",
                self.spec.name,
                unknown.join(", ")
            )));
        }
        if !unhealthy.is_empty() {
            return Err(ServiceError::InvalidArgument(format!(
                "unhealthy device IDs for {}: {}",
                self.spec.name,
                unhealthy.join(", ")
            )));
        }
        Ok(())
    }
}

/// A preferred answer the kubelet can use: distinct IDs from `available`, every
/// `must_include`, at most `size`.
fn check_preferred(request: &PreferredRequest, ids: &[String]) -> Result<(), String> {
    let available: HashSet<&str> = request.available.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    for id in ids {
        if !available.contains(id.as_str()) {
            return Err(format!("{id:?} is not among the available devices"));
        }
        if !seen.insert(id.as_str()) {
            return Err(format!("{id:?} appears twice"));
        }
    }
    if let Some(missing) = request
        .must_include
        .iter()
        .find(|id| !seen.contains(id.as_str()))
    {
        return Err(format!("must-include device {missing:?} is missing"));
    }
    if ids.len() > request.size {
        return Err(format!(
            "{} devices for a request of {}",
            ids.len(),
            request.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, DeviceSpec, ResourceOptions};
    use crate::resource::backend::BoxFuture;
    use std::sync::Mutex;

    /// A native backend whose answers the test controls.
    struct Fake {
        devices: Mutex<Result<Vec<Device>, String>>,
        allocation: Mutex<Option<Vec<ContainerAllocation>>>,
        preferred: Mutex<Vec<String>>,
    }

    impl Default for Fake {
        fn default() -> Self {
            Self {
                devices: Mutex::new(Ok(Vec::new())),
                allocation: Mutex::new(None),
                preferred: Mutex::new(Vec::new()),
            }
        }
    }

    fn fail(message: &str) -> GuestError {
        GuestError::Reported {
            guest: "fake".into(),
            call: "test",
            kind: ReportedKind::Other,
            message: message.into(),
        }
    }

    impl Backend for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn list_devices<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Vec<Device>, GuestError>> {
            let answer = self.devices.lock().unwrap().clone().map_err(|m| fail(&m));
            Box::pin(async move { answer })
        }
        fn allocate<'a>(
            &'a self,
            _: &'a str,
            c: Vec<Vec<String>>,
        ) -> BoxFuture<'a, Result<Vec<ContainerAllocation>, GuestError>> {
            let answer = self
                .allocation
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| vec![ContainerAllocation::default(); c.len()]);
            Box::pin(async move { Ok(answer) })
        }
        fn preferred_allocation<'a>(
            &'a self,
            _: &'a str,
            _: &'a PreferredRequest,
        ) -> BoxFuture<'a, Result<Vec<String>, GuestError>> {
            let answer = self.preferred.lock().unwrap().clone();
            Box::pin(async move { Ok(answer) })
        }
        fn pre_start<'a>(
            &'a self,
            _: &'a str,
            _: Vec<String>,
        ) -> BoxFuture<'a, Result<(), GuestError>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn dev(id: &str, health: Health) -> Device {
        Device {
            id: id.into(),
            health,
            numa_nodes: vec![],
        }
    }

    fn service(fake: Arc<Fake>, options: ResourceOptions) -> ResourceService {
        let spec = ResourceSpec {
            name: "example.com/dev".into(),
            options,
        };
        let grant = Grant {
            devices: vec![crate::grant::DeviceGrant {
                pattern: "/dev/**".into(),
                kind: crate::grant::NodeKind::Char,
            }],
            ..Grant::none()
        };
        ResourceService::new(spec, fake, "/nonexistent-root", Arc::new(grant))
    }

    #[tokio::test]
    async fn publishes_only_changes_and_turns_unhealthy_after_repeated_failures() {
        let fake = Arc::new(Fake::default());
        *fake.devices.lock().unwrap() =
            Ok(vec![dev("a", Health::Healthy), dev("b", Health::Healthy)]);
        let s = service(fake.clone(), ResourceOptions::default());
        assert!(s.refresh().await);
        assert!(!s.refresh().await, "an unchanged list is not re-sent");
        *fake.devices.lock().unwrap() = Err("boom".into());
        assert!(!s.refresh().await);
        assert!(!s.refresh().await);
        assert!(s.refresh().await, "third failure marks devices unhealthy");
        let current = s.current();
        assert_eq!(current.devices().len(), 2, "devices stay listed");
        assert!(
            current
                .devices()
                .iter()
                .all(|d| d.health == Health::Unhealthy)
        );
        *fake.devices.lock().unwrap() =
            Ok(vec![dev("a", Health::Healthy), dev("b", Health::Healthy)]);
        assert!(s.refresh().await, "recovery is published");
    }

    #[tokio::test]
    async fn allocate_refuses_unknown_unhealthy_and_duplicate_ids() {
        let fake = Arc::new(Fake::default());
        *fake.devices.lock().unwrap() =
            Ok(vec![dev("a", Health::Healthy), dev("b", Health::Unhealthy)]);
        let s = service(fake, ResourceOptions::default());
        s.refresh().await;
        let err = s
            .allocate(vec![vec!["a".into(), "zz".into()]])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ServiceError::InvalidArgument(m) if m.contains("zz")),
            "{err:?}"
        );
        let err = s.allocate(vec![vec!["b".into()]]).await.unwrap_err();
        assert!(
            matches!(&err, ServiceError::InvalidArgument(m) if m.contains("unhealthy")),
            "{err:?}"
        );
        let err = s
            .allocate(vec![vec!["a".into(), "a".into()]])
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::InvalidArgument(_)));
        assert_eq!(
            s.allocate(vec![vec!["a".into()], vec!["a".into()]])
                .await
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn allocate_refuses_malformed_guest_answers() {
        let fake = Arc::new(Fake::default());
        *fake.devices.lock().unwrap() = Ok(vec![dev("a", Health::Healthy)]);
        let s = service(fake.clone(), ResourceOptions::default());
        s.refresh().await;
        *fake.allocation.lock().unwrap() = Some(vec![]);
        assert!(matches!(
            s.allocate(vec![vec!["a".into()]]).await,
            Err(ServiceError::Internal(_))
        ));
        let bad = ContainerAllocation {
            devices: vec![DeviceSpec {
                container_path: "/dev/x".into(),
                host_path: "/dev/x".into(),
                permissions: "rwx".into(),
            }],
            ..Default::default()
        };
        *fake.allocation.lock().unwrap() = Some(vec![bad]);
        assert!(matches!(
            s.allocate(vec![vec!["a".into()]]).await,
            Err(ServiceError::Internal(_))
        ));
    }

    #[tokio::test]
    async fn preferred_allocation_never_fails_and_checks_answers() {
        let fake = Arc::new(Fake::default());
        let options = ResourceOptions {
            preferred_allocation_available: true,
            ..Default::default()
        };
        let s = service(fake.clone(), options);
        let request = PreferredRequest {
            available: vec!["a".into(), "b".into(), "c".into()],
            must_include: vec!["b".into()],
            size: 2,
        };
        *fake.preferred.lock().unwrap() = vec!["b".into(), "c".into()];
        assert_eq!(
            s.preferred_allocation(vec![request.clone()]).await,
            vec![vec!["b".to_string(), "c".to_string()]]
        );
        for bad in [
            vec!["a", "c"],
            vec!["b", "z"],
            vec!["b", "a", "c"],
            vec!["b", "b"],
        ] {
            *fake.preferred.lock().unwrap() = bad.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                s.preferred_allocation(vec![request.clone()]).await,
                vec![Vec::<String>::new()],
                "{bad:?}"
            );
        }
    }
}
