//! A loaded guest and the thread that runs it.
//!
//! Each guest gets one OS thread that owns its `Store` (stores are not `Sync`, and a
//! dedicated thread means a guest stuck in a host call can never block the async
//! runtime). Calls arrive over a bounded queue and run one at a time under an epoch
//! deadline. A trap or deadline discards the instance; the next call re-instantiates
//! from the pre-linked component and calls `configure` again, so a fault costs one call,
//! never the guest or the host.

use std::collections::HashMap;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use tokio::sync::oneshot;
use wasmtime::Store;

use super::convert;
use super::engine::{Runtime, ticks};
use super::error::GuestError;
use super::limits::GuestLimits;
use super::state::GuestState;
use crate::config::policy::GuestPolicy;
use crate::device::{ContainerAllocation, Device, PreferredRequest, ResourceSpec};
use crate::grant::Grant;
use crate::handout::CdiLedger;
use crate::hostfns::NodeAccess;
use crate::metrics::metrics;
use crate::wit::latest::plugin::Guest as PluginExports;
use crate::wit::latest::release_hook::{ReleaseHook, ReleaseHookIndices};
use crate::wit::latest::types::Error as WitError;
use crate::wit::latest::{DevicePlugin, DevicePluginPre};

/// Calls that may wait for a busy guest before callers are told it is unavailable.
const QUEUE_DEPTH: usize = 64;
/// Extra wall-clock time on top of a call's CPU deadline before the caller gives up
/// (covers queueing and a host call that blocks on slow I/O).
const WALL_CLOCK_GRACE: Duration = Duration::from_secs(2);
/// Longest trap message kept for logs.
const MAX_REASON_BYTES: usize = 512;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Handle to a running guest. Cheap to clone; the guest's thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Guest {
    name: Arc<str>,
    jobs: SyncSender<Job>,
    resources: Arc<[ResourceSpec]>,
    limits: Arc<GuestLimits>,
    grant: Arc<Grant>,
    cdi_ledger: CdiLedger,
    faults: Arc<FaultRecord>,
    handles_release: bool,
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
            .with_device_nodes(runtime.device_nodes);
        let cdi_ledger = node.cdi_ledger().clone();
        // A guest without the optional export still links; it just is not told.
        let release_hook = ReleaseHookIndices::new(pre.instance_pre()).ok();
        let handles_release = release_hook.is_some();
        let worker = Worker {
            name: name.into(),
            release_hook,
            pre,
            config,
            limits: policy.limits.clone(),
            node,
            live: None,
        };
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name(format!("guest-{name}"))
            .spawn(move || {
                let mut worker = worker;
                while let Ok(job) = queue.recv() {
                    job(&mut worker);
                }
            })
            .map_err(|e| GuestError::Unavailable {
                guest: name.into(),
                reason: format!("cannot start its thread: {e}"),
            })?;
        let mut guest = Guest {
            name: name.into(),
            jobs,
            resources: Arc::from(Vec::new()),
            limits: Arc::new(policy.limits),
            grant,
            cdi_ledger,
            faults: Arc::default(),
            handles_release,
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
        let job: Job = Box::new(move |worker: &mut Worker| {
            let _ = reply.send(worker.call(call, budget, f));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(self.unavailable(format!("{QUEUE_DEPTH} calls already waiting")));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(self.unavailable("its thread has ended".into()));
            }
        }
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
            Err(_) => Err(GuestError::Deadline {
                guest: self.name.to_string(),
                call,
                limit: budget,
            }),
        }
    }

    fn unavailable(&self, reason: String) -> GuestError {
        GuestError::Unavailable {
            guest: self.name.to_string(),
            reason,
        }
    }
}

/// State owned by a guest's thread.
struct Worker {
    name: String,
    pre: DevicePluginPre<GuestState>,
    config: String,
    limits: GuestLimits,
    /// Host functions' state, cloned into every new instance.
    node: NodeAccess,
    /// Where the optional `lifecycle` export is, if the guest has it.
    release_hook: Option<ReleaseHookIndices>,
    /// The live instance; `None` after a fault until the next call rebuilds it.
    live: Option<Live>,
}

struct Live {
    store: Store<GuestState>,
    bindings: Bindings,
}

/// A live instance's exports: the contract's, and the optional release hook.
pub(crate) struct Bindings {
    plugin: DevicePlugin,
    release: Option<ReleaseHook>,
}

impl Bindings {
    fn plugin(&self) -> &PluginExports {
        self.plugin.wdp_device_plugin_plugin()
    }
}

impl Worker {
    fn call<R>(
        &mut self,
        call: &'static str,
        budget: Duration,
        f: impl FnOnce(&Bindings, &mut Store<GuestState>) -> wasmtime::Result<Result<R, WitError>>,
    ) -> Result<R, GuestError> {
        let live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate()?,
        };
        let Live {
            mut store,
            bindings,
        } = live;
        store.set_epoch_deadline(ticks(budget));
        store.data_mut().limits.memory_refused = None;
        let outcome = f(&bindings, &mut store);
        match outcome {
            Ok(answer) => {
                self.live = Some(Live { store, bindings });
                answer.map_err(|error| GuestError::Reported {
                    guest: self.name.clone(),
                    call,
                    error,
                })
            }
            // The instance is poisoned after a trap: drop it (`live` stays `None`).
            Err(e) => {
                let refused = store.data().limits.memory_refused;
                let error = self.fault(call, budget, e, refused);
                tracing::warn!(guest = %self.name, error = %error, "guest call failed");
                Err(error)
            }
        }
    }

    fn instantiate(&mut self) -> Result<Live, GuestError> {
        let mut store = Store::new(
            self.pre.engine(),
            GuestState::new(self.node.clone(), &self.limits),
        );
        store.limiter(|state| &mut state.limits);
        store.set_hostcall_fuel(self.limits.hostcall_bytes);
        store.epoch_deadline_trap();
        // Instantiation runs guest code (start functions), so the deadline comes first.
        let budget = self.limits.deadlines.configure;
        store.set_epoch_deadline(ticks(budget));
        let instance = self
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| self.fault("instantiate", budget, e, None))?;
        let plugin = DevicePlugin::new(&mut store, &instance)
            .map_err(|e| self.fault("instantiate", budget, e, None))?;
        let release = match &self.release_hook {
            Some(indices) => Some(
                indices
                    .load(&mut store, &instance)
                    .map_err(|e| self.fault("instantiate", budget, e, None))?,
            ),
            None => None,
        };
        let bindings = Bindings { plugin, release };
        match bindings.plugin().call_configure(&mut store, &self.config) {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(error)) => Err(GuestError::Reported {
                guest: self.name.clone(),
                call: "configure",
                error,
            }),
            Err(e) => {
                let refused = store.data().limits.memory_refused;
                Err(self.fault("configure", budget, e, refused))
            }
        }
    }

    /// Classifies a trap; `memory_refused` is the size of a refused memory growth, which
    /// explains an otherwise bare `unreachable` trap.
    fn fault(
        &self,
        call: &'static str,
        budget: Duration,
        e: wasmtime::Error,
        memory_refused: Option<usize>,
    ) -> GuestError {
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return GuestError::Deadline {
                guest: self.name.clone(),
                call,
                limit: budget,
            };
        }
        let mut reason = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{e:#}"),
        };
        // A trap's text carries the guest's own function names (its name section):
        // guest text, so cleaned like any other.
        reason = crate::guest_text::clean_to(&reason, MAX_REASON_BYTES);
        if let Some(desired) = memory_refused {
            reason = format!(
                "{reason} (it asked for {} MiB of memory; its limit is {} MiB)",
                desired >> 20,
                self.limits.memory_bytes >> 20
            );
        }
        GuestError::Trap {
            guest: self.name.clone(),
            call,
            reason,
        }
    }
}
