//! A loaded guest: the handle the resource layer calls, and its crash-loop record.
//!
//! Calls run on the guest's own thread ([`super::worker`]) under a wall-clock deadline.
//! A trap or deadline discards the instance; the next call re-instantiates from the
//! pre-linked component and calls `configure` again. A call stuck in a host function
//! past its deadline plus grace is answered at once and its thread cut loose. So a fault
//! costs one call, never the guest or the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use tokio::sync::oneshot;
use wasmtime::Store;

use super::convert;
use super::engine::Runtime;
use super::error::GuestError;
use super::state::GuestState;
use super::worker::{Bindings, Job, Lane, QUEUE_DEPTH, Refusal, WorkerSeed};
use crate::device::{ContainerAllocation, Device, PreferredRequest, ResourceSpec};
use crate::grant::Grant;
use crate::handout::CdiLedger;
use crate::hostfns::NodeAccess;
use crate::metrics::metrics;
use crate::policy::GuestLimits;
use crate::policy::GuestPolicy;
use crate::wit::latest::DevicePluginPre;
use crate::wit::latest::label_source::LabelSourceIndices;
use crate::wit::latest::release_hook::ReleaseHookIndices;
use crate::wit::latest::types::Error as WitError;

/// Extra wall-clock time on top of a call's deadline before the caller gives up and
/// the thread is cut loose (covers queueing and a host call that blocks on slow I/O).
pub const WALL_CLOCK_GRACE: Duration = Duration::from_secs(2);
/// Handle to a running guest. Cheap to clone; the guest's thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Guest {
    name: Arc<str>,
    lane: Arc<Lane>,
    resources: Arc<[ResourceSpec]>,
    limits: Arc<GuestLimits>,
    grant: Arc<Grant>,
    cdi_ledger: CdiLedger,
    faults: Arc<FaultRecord>,
    handles_release: bool,
    publishes_labels: bool,
}

/// Consecutive faults (traps, deadlines) per export, for crash-loop detection.
#[derive(Debug, Default)]
struct FaultRecord {
    by_call: Mutex<HashMap<&'static str, (u32, Instant)>>,
}

/// Faults in a row, of one export, after which the guest counts as degraded.
pub const FAULTS_BEFORE_DEGRADED: u32 = 3;

impl FaultRecord {
    fn record(&self, call: &'static str, faulted: bool) {
        let mut by_call = self.by_call.lock().unwrap_or_else(|p| p.into_inner());
        if faulted {
            let entry = by_call.entry(call).or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
        } else {
            by_call.remove(call);
        }
    }

    /// The export that faulted too often, unless `cooldown` has passed since its last
    /// fault (then its devices are offered again; one more fault degrades it at once).
    fn degraded(&self, cooldown: Duration) -> Option<&'static str> {
        let by_call = self.by_call.lock().unwrap_or_else(|p| p.into_inner());
        by_call
            .iter()
            .find(|(_, (count, last))| {
                *count >= FAULTS_BEFORE_DEGRADED && last.elapsed() < cooldown
            })
            .map(|(call, _)| *call)
    }
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest").field("name", &self.name).finish()
    }
}

impl Guest {
    /// Starts the guest's thread, instantiates it, configures it and asks for its
    /// resources; any failure there means the guest does not start.
    pub(crate) async fn start(
        runtime: &Runtime,
        name: &str,
        pre: DevicePluginPre<GuestState>,
        config: String,
        policy: GuestPolicy,
    ) -> Result<Guest, GuestError> {
        let grant = Arc::new(policy.grant);
        let node = NodeAccess::new(name, &runtime.host_root, grant.clone(), &runtime.cdi_dir)
            .with_device_nodes(runtime.device_nodes)
            .with_kmsg_start(runtime.kmsg_start)
            .with_nvml(runtime.nvml.clone());
        let cdi_ledger = node.cdi_ledger().clone();
        // A guest without the optional export still links; it just is not told.
        let release_hook = ReleaseHookIndices::new(pre.instance_pre()).ok();
        let handles_release = release_hook.is_some();
        let label_source = LabelSourceIndices::new(pre.instance_pre()).ok();
        let publishes_labels = label_source.is_some();
        let seed = WorkerSeed {
            name: name.into(),
            release_hook,
            label_source,
            pre,
            config,
            limits: policy.limits.clone(),
            node,
        };
        let lane = Lane::start(seed, runtime.stuck_counter(name)).map_err(|e| {
            GuestError::Unavailable {
                guest: name.into(),
                reason: format!("cannot start its thread: {e}"),
            }
        })?;
        let mut guest = Guest {
            name: name.into(),
            lane: Arc::new(lane),
            resources: Arc::from(Vec::new()),
            limits: Arc::new(policy.limits),
            grant,
            cdi_ledger,
            faults: Arc::default(),
            handles_release,
            publishes_labels,
        };
        let budget = guest.limits.deadlines.enumerate;
        let resources = guest
            .call("resources", budget, |exports, store| {
                exports.plugin().call_resources(store)
            })
            .await?;
        guest.resources = resources.into_iter().map(convert::resource).collect();
        Ok(guest)
    }

    /// The guest's name (its file name without `.wasm`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CDI devices this guest defined through the host (shared by its instances).
    pub fn cdi_ledger(&self) -> &CdiLedger {
        &self.cdi_ledger
    }

    /// What the guest may touch, hand out and advertise.
    pub fn grant(&self) -> &Arc<Grant> {
        &self.grant
    }

    /// The export that faulted [`FAULTS_BEFORE_DEGRADED`] times in a row, the last time
    /// within the guest's fault cool-down, if any: its devices should not be offered.
    pub fn degraded(&self) -> Option<&'static str> {
        self.faults.degraded(self.limits.fault_cooldown)
    }

    /// The resources the guest reported when it started.
    pub fn resources(&self) -> &[ResourceSpec] {
        &self.resources
    }

    pub async fn list_devices(&self, resource: &str) -> Result<Vec<Device>, GuestError> {
        let resource = resource.to_owned();
        let budget = self.limits.deadlines.enumerate;
        let devices = self
            .call("list-devices", budget, move |exports, store| {
                exports.plugin().call_list_devices(store, &resource)
            })
            .await?;
        Ok(devices.into_iter().map(convert::device).collect())
    }

    pub async fn allocate(
        &self,
        resource: &str,
        containers: Vec<Vec<String>>,
    ) -> Result<Vec<ContainerAllocation>, GuestError> {
        let resource = resource.to_owned();
        let budget = self.limits.deadlines.allocate;
        let answer = self
            .call("allocate", budget, move |exports, store| {
                exports
                    .plugin()
                    .call_allocate(store, &resource, &containers)
            })
            .await?;
        answer
            .into_iter()
            .map(convert::allocation)
            .collect::<Result<_, _>>()
            .map_err(|reason| GuestError::Malformed {
                guest: self.name.to_string(),
                call: "allocate",
                reason,
            })
    }

    pub async fn preferred_allocation(
        &self,
        resource: &str,
        request: &PreferredRequest,
    ) -> Result<Vec<String>, GuestError> {
        let resource = resource.to_owned();
        let request = convert::preferred_request(request);
        let budget = self.limits.deadlines.preferred_allocation;
        self.call("preferred-allocation", budget, move |exports, store| {
            exports
                .plugin()
                .call_preferred_allocation(store, &resource, &request)
        })
        .await
    }

    /// Whether the guest exports the optional release hook.
    pub fn handles_release(&self) -> bool {
        self.handles_release
    }

    /// Tells the guest that `ids` are no longer assigned to any container. A guest
    /// without the release hook is not called.
    pub async fn release(&self, resource: &str, ids: Vec<String>) -> Result<(), GuestError> {
        if !self.handles_release {
            return Ok(());
        }
        let resource = resource.to_owned();
        let budget = self.limits.deadlines.pre_start;
        let guest = self.name.to_string();
        self.call("release", budget, move |exports, store| {
            match &exports.release {
                Some(hook) => hook
                    .wdp_device_plugin_lifecycle()
                    .call_release(store, &resource, &ids),
                None => Ok(Err(WitError::Other(format!(
                    "guest {guest} has no release hook"
                )))),
            }
        })
        .await
    }

    /// Whether the guest exports the optional `node-labels` interface.
    pub fn publishes_labels(&self) -> bool {
        self.publishes_labels
    }

    /// The node labels the guest proposes (unchecked: see `handout::node_labels`); none
    /// from a guest without the export. Bounded by the enumerate deadline.
    pub async fn labels(&self) -> Result<Vec<(String, String)>, GuestError> {
        if !self.publishes_labels {
            return Ok(Vec::new());
        }
        let budget = self.limits.deadlines.enumerate;
        let guest = self.name.to_string();
        self.call("labels", budget, move |exports, store| {
            match &exports.labels {
                Some(source) => source.wdp_device_plugin_node_labels().call_labels(store),
                None => Ok(Err(WitError::Other(format!(
                    "guest {guest} does not publish labels"
                )))),
            }
        })
        .await
    }

    pub async fn pre_start(&self, resource: &str, ids: Vec<String>) -> Result<(), GuestError> {
        let resource = resource.to_owned();
        let budget = self.limits.deadlines.pre_start;
        self.call("pre-start", budget, move |exports, store| {
            exports.plugin().call_pre_start(store, &resource, &ids)
        })
        .await
    }

    /// Queues one export call on the guest's thread and waits for its answer.
    async fn call<R, F>(&self, call: &'static str, budget: Duration, f: F) -> Result<R, GuestError>
    where
        R: Send + 'static,
        F: FnOnce(&Bindings, &mut Store<GuestState>) -> wasmtime::Result<Result<R, WitError>>
            + Send
            + 'static,
    {
        let span = tracing::debug_span!("guest_call", guest = %self.name, call);
        let _enter = span.enter();
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |worker| {
            // A caller that has given up (deadline, cancelled RPC) is never served late:
            // a pre-start reset the kubelet stopped waiting for must not run afterwards.
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(worker.call(call, budget, f));
        });
        let generation = match self.lane.submit(job) {
            Ok(generation) => generation,
            Err(Refusal::Busy) => {
                return Err(self.unavailable(format!("{QUEUE_DEPTH} calls already waiting")));
            }
            Err(Refusal::OutOfService { stuck }) => {
                self.faults.record(call, true);
                return Err(self.unavailable(format!(
                    "{stuck} of its calls are stuck in host functions; it takes no calls until one returns"
                )));
            }
            Err(Refusal::Spawn(e)) => {
                return Err(self.unavailable(format!("cannot start a thread: {e}")));
            }
        };
        drop(_enter);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(budget + WALL_CLOCK_GRACE, answer).await;
        metrics().observe_guest_call(&self.name, call, started.elapsed());
        match outcome {
            Ok(Ok(result)) => {
                let fault = match &result {
                    Err(GuestError::Trap { .. }) => Some("trap"),
                    Err(GuestError::Deadline { .. }) => Some("deadline"),
                    _ => None,
                };
                if let Some(kind) = fault {
                    metrics().guest_fault(&self.name, kind);
                }
                self.faults.record(call, fault.is_some());
                result
            }
            Ok(Err(_)) => Err(self.unavailable("its thread ended during the call".into())),
            Err(_) => {
                // Stuck in a host function, where epoch interruption cannot reach.
                let stuck = self.lane.cut_loose(generation);
                metrics().guest_fault(&self.name, "stuck");
                metrics().set_stuck_threads(&self.name, stuck);
                self.faults.record(call, true);
                tracing::error!(
                    guest = %self.name,
                    call,
                    stuck,
                    "guest call stuck in a host function past its deadline; its thread is cut loose \
                     and a fresh instance takes the next call (check what the guest reads: a FIFO, \
                     a slow driver attribute, a sleep)"
                );
                Err(GuestError::Deadline {
                    guest: self.name.to_string(),
                    call,
                    limit: budget,
                })
            }
        }
    }

    /// Threads of this guest stuck in host calls right now.
    pub fn stuck_threads(&self) -> usize {
        self.lane.stuck()
    }

    fn unavailable(&self, reason: String) -> GuestError {
        GuestError::Unavailable {
            guest: self.name.to_string(),
            reason,
        }
    }
}
