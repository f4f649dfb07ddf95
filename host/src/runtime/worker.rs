//! The thread that runs a guest, and what happens when it gets stuck.
//!
//! A guest's `Store` lives on one OS thread (stores are not `Sync`, and a dedicated
//! thread means a guest stuck in a host call never blocks the async runtime). Calls
//! arrive over a bounded queue and run one at a time under an epoch deadline. Epoch
//! interruption cannot stop a call blocked inside a host function (a blocking read, a
//! WASI sleep): when a caller's wall-clock budget runs out, the [`Lane`] cuts the thread
//! loose — it is abandoned with its instance, counted as stuck, and a fresh thread
//! takes the next call — so one stuck call costs that call, never the guest. A call
//! whose caller has already given up is never started. Stuck threads are capped per
//! guest: past the cap the guest is out of service until one of them returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Store;

use super::engine::ticks;
use super::error::GuestError;
use super::state::GuestState;
use crate::hostfns::NodeAccess;
use crate::policy::GuestLimits;
use crate::wit::latest::label_source::{LabelSource, LabelSourceIndices};
use crate::wit::latest::plugin::Guest as PluginExports;
use crate::wit::latest::release_hook::{ReleaseHook, ReleaseHookIndices};
use crate::wit::latest::types::Error as WitError;
use crate::wit::latest::{DevicePlugin, DevicePluginPre};

/// Calls that may wait for a busy guest before callers are told it is unavailable.
pub(crate) const QUEUE_DEPTH: usize = 64;
/// Threads of one guest that may be stuck in host calls at once; past this the guest
/// takes no calls until one returns (each holds a thread and an instance's memory).
pub const MAX_STUCK_THREADS: usize = 3;
/// Longest trap message kept for logs.
const MAX_REASON_BYTES: usize = 512;

/// One call, run on the guest's thread.
pub(crate) type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// What a fresh worker is made from: everything but the live instance.
#[derive(Clone)]
pub(crate) struct WorkerSeed {
    pub name: String,
    pub pre: DevicePluginPre<GuestState>,
    pub config: String,
    pub limits: GuestLimits,
    pub node: NodeAccess,
    pub release_hook: Option<ReleaseHookIndices>,
    pub label_source: Option<LabelSourceIndices>,
}

/// Why a call could not be queued.
pub(crate) enum Refusal {
    /// The queue is full.
    Busy,
    /// Too many threads are stuck; the guest takes no calls until one returns.
    OutOfService { stuck: usize },
    /// A thread could not be started.
    Spawn(std::io::Error),
}

/// The guest's current thread, and the ones it had to abandon.
pub(crate) struct Lane {
    seed: WorkerSeed,
    current: Mutex<Current>,
    /// Abandoned threads still blocked in a call.
    stuck: Arc<AtomicUsize>,
}

struct Current {
    /// The live thread's queue; `None` while out of service.
    queue: Option<SyncSender<Job>>,
    /// Raised when the live thread is abandoned, so it counts itself out on return.
    abandoned: Arc<AtomicBool>,
    /// Increases with every thread started, so that only the caller who saw a thread
    /// stuck can cut that thread loose (not a later, healthy one).
    generation: u64,
}

impl Lane {
    /// Starts the first thread, unless the guest already has [`MAX_STUCK_THREADS`]
    /// stuck: `stuck` counts its abandoned threads across its versions, so that
    /// reloading a guest does not reset its cap (the lane then starts out of service).
    pub(crate) fn start(seed: WorkerSeed, stuck: Arc<AtomicUsize>) -> std::io::Result<Lane> {
        let (queue, abandoned) = if stuck.load(Ordering::SeqCst) < MAX_STUCK_THREADS {
            let (queue, abandoned) = spawn(&seed, &stuck)?;
            (Some(queue), abandoned)
        } else {
            (None, Arc::new(AtomicBool::new(false)))
        };
        Ok(Lane {
            seed,
            current: Mutex::new(Current {
                queue,
                abandoned,
                generation: 0,
            }),
            stuck,
        })
    }

    /// Queues `job` on the live thread; returns the thread's generation. A lane out of
    /// service, or whose thread has ended, starts a fresh thread first, unless
    /// [`MAX_STUCK_THREADS`] are stuck.
    pub(crate) fn submit(&self, job: Job) -> Result<u64, Refusal> {
        let mut current = self.lock();
        let mut job = job;
        for _ in 0..2 {
            if current.queue.is_none() {
                let stuck = self.stuck.load(Ordering::SeqCst);
                if stuck >= MAX_STUCK_THREADS {
                    return Err(Refusal::OutOfService { stuck });
                }
                let (queue, abandoned) = spawn(&self.seed, &self.stuck).map_err(Refusal::Spawn)?;
                current.queue = Some(queue);
                current.abandoned = abandoned;
                current.generation += 1;
            }
            let Some(queue) = current.queue.as_ref() else {
                continue;
            };
            match queue.try_send(job) {
                Ok(()) => return Ok(current.generation),
                Err(TrySendError::Full(_)) => return Err(Refusal::Busy),
                // The thread ended (it panicked): start another for this call.
                Err(TrySendError::Disconnected(returned)) => {
                    job = returned;
                    current.queue = None;
                }
            }
        }
        Err(Refusal::Busy)
    }

    /// The thread of `generation` is stuck in a call: abandon it (it ends by itself if
    /// the call ever returns) and start a fresh one, unless [`MAX_STUCK_THREADS`] are
    /// stuck already. Returns how many are stuck now.
    pub(crate) fn cut_loose(&self, generation: u64) -> usize {
        let mut current = self.lock();
        if current.generation != generation || current.queue.is_none() {
            // Already cut loose by an earlier caller.
            return self.stuck.load(Ordering::SeqCst);
        }
        current.abandoned.store(true, Ordering::SeqCst);
        let stuck = self.stuck.fetch_add(1, Ordering::SeqCst) + 1;
        current.queue = None;
        if stuck < MAX_STUCK_THREADS
            && let Ok((queue, abandoned)) = spawn(&self.seed, &self.stuck)
        {
            current.queue = Some(queue);
            current.abandoned = abandoned;
            current.generation += 1;
        }
        stuck
    }

    /// Abandoned threads still blocked in a call.
    pub(crate) fn stuck(&self) -> usize {
        self.stuck.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts a worker thread from `seed`; it runs jobs until its queue is dropped, then
/// counts itself out of `stuck` if it had been abandoned.
fn spawn(
    seed: &WorkerSeed,
    stuck: &Arc<AtomicUsize>,
) -> std::io::Result<(SyncSender<Job>, Arc<AtomicBool>)> {
    let (queue, jobs) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
    let abandoned = Arc::new(AtomicBool::new(false));
    let mut worker = Worker {
        name: seed.name.clone(),
        pre: seed.pre.clone(),
        config: seed.config.clone(),
        limits: seed.limits.clone(),
        node: seed.node.clone(),
        release_hook: seed.release_hook.clone(),
        label_source: seed.label_source.clone(),
        live: None,
    };
    let (flag, stuck) = (abandoned.clone(), stuck.clone());
    std::thread::Builder::new()
        .name(format!("guest-{}", seed.name))
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                job(&mut worker);
            }
            if flag.load(Ordering::SeqCst) {
                stuck.fetch_sub(1, Ordering::SeqCst);
                tracing::info!(guest = %worker.name, "a stuck guest call returned; its thread has ended");
            }
        })?;
    Ok((queue, abandoned))
}

/// State owned by a guest's thread.
pub(crate) struct Worker {
    name: String,
    pre: DevicePluginPre<GuestState>,
    config: String,
    limits: GuestLimits,
    /// Host functions' state, cloned into every new instance.
    node: NodeAccess,
    /// Where the optional `lifecycle` export is, if the guest has it.
    release_hook: Option<ReleaseHookIndices>,
    /// Where the optional `node-labels` export is, if the guest has it.
    label_source: Option<LabelSourceIndices>,
    /// The live instance; `None` after a fault until the next call rebuilds it.
    live: Option<Live>,
}

struct Live {
    store: Store<GuestState>,
    bindings: Bindings,
}

/// A live instance's exports: the contract's, and the optional release hook and labels.
pub(crate) struct Bindings {
    plugin: DevicePlugin,
    pub(crate) release: Option<ReleaseHook>,
    pub(crate) labels: Option<LabelSource>,
}

impl Bindings {
    pub(crate) fn plugin(&self) -> &PluginExports {
        self.plugin.wdp_device_plugin_plugin()
    }
}

impl Worker {
    /// Runs one export call on the live instance (instantiating one first if needed)
    /// under its epoch deadline.
    pub(crate) fn call<R>(
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
                answer.map_err(|error| GuestError::reported(&self.name, call, error))
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
        let labels = match &self.label_source {
            Some(indices) => Some(
                indices
                    .load(&mut store, &instance)
                    .map_err(|e| self.fault("instantiate", budget, e, None))?,
            ),
            None => None,
        };
        let bindings = Bindings {
            plugin,
            release,
            labels,
        };
        match bindings.plugin().call_configure(&mut store, &self.config) {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(error)) => Err(GuestError::reported(&self.name, "configure", error)),
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
