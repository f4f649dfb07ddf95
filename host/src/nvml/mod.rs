//! NVIDIA's management library (NVML), loaded from the node when it has one and read on
//! a thread of its own, for guests granted `nvml`.
//!
//! Why a thread: NVML calls can block for seconds (a GPU that fell off the bus, a driver
//! being reloaded). Guests never call NVML; they read the latest [`Reading`], which the
//! pump thread refreshes every [`NvmlConfig::refresh`] and soon after each event, and the
//! [`EventLog`] it fills. A hung NVML therefore makes the reading grow old — reported to
//! guests as an error after [`NvmlConfig::stale_after`] — and slows no guest call.
//!
//! Without the library (a node with no NVIDIA driver, a static build that cannot load
//! shared libraries, `--nvml off`) the host serves as before: guests are told NVML is
//! unavailable and fall back to sysfs.

pub mod events;
pub mod library;
pub mod reading;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

pub use events::{Batch, Event, EventKind, EventLog};
pub use reading::{Gpu, MigDevice, MigMode, NvLink, Reading};

use crate::host_root::resolver::Resolver;
use library::{EVENT_DOUBLE_BIT_ECC, EVENT_XID_CRITICAL, Library, NO_INSTANCE};

/// The library's file name, as the driver installs it.
pub const LIBRARY: &str = "libnvidia-ml.so.1";
/// Node directories searched for [`LIBRARY`], in order: the distributions' library
/// directories, the NVIDIA GPU operator's driver container root, and where NVIDIA's
/// container toolkit puts it on some images.
pub const SEARCH_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib64",
    "/run/nvidia/driver/usr/lib/x86_64-linux-gnu",
    "/run/nvidia/driver/usr/lib64",
    "/usr/local/nvidia/lib64",
];
/// How long start-up waits for the library to load and answer once.
const FIRST_READING_WAIT: Duration = Duration::from_secs(5);
/// One wait for events; also how often the pump notices the host has gone.
const EVENT_WAIT_MS: u32 = 250;
/// Soonest re-reading after an event (a storm of XIDs costs one reading per second).
const AFTER_EVENT: Duration = Duration::from_secs(1);

/// Where the library comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    /// Not used: guests are told NVML is unavailable.
    Off,
    /// [`LIBRARY`] in the node's [`SEARCH_DIRS`] (under the host root); on a host root
    /// of `/`, then also the host's own library path (e.g. injected by NVIDIA's
    /// container toolkit).
    Auto,
    /// This file, as the host process sees it.
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct NvmlConfig {
    pub library: LibrarySource,
    /// How often the GPUs are read again without an event.
    pub refresh: Duration,
    /// A reading older than this is no longer handed out (NVML stopped answering).
    pub stale_after: Duration,
}

impl Default for NvmlConfig {
    fn default() -> Self {
        Self {
            library: LibrarySource::Auto,
            refresh: Duration::from_secs(5),
            stale_after: Duration::from_secs(30),
        }
    }
}

/// What a guest's `nvml.devices` gets.
#[derive(Debug, Clone)]
pub enum Answer {
    /// No working NVML on this node; the reason is in the host's log.
    Unavailable,
    Current(Arc<Reading>),
    /// NVML is there but the latest reading failed or is too old.
    Failed(String),
}

/// The host's NVML: cheap to clone, shared by every guest.
#[derive(Debug, Clone)]
pub struct Nvml {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    events: EventLog,
    stale_after: Duration,
}

#[derive(Debug)]
enum State {
    Unavailable(String),
    /// Loaded from `library`; the latest reading (or why it failed) and when it was made.
    Serving {
        library: String,
        latest: Result<Arc<Reading>, String>,
        at: Instant,
    },
}

impl Nvml {
    /// No NVML, for `reason`.
    pub fn unavailable(reason: impl Into<String>) -> Nvml {
        Nvml {
            shared: Arc::new(Shared {
                state: Mutex::new(State::Unavailable(reason.into())),
                events: EventLog::default(),
                stale_after: Duration::MAX,
            }),
        }
    }

    /// Finds and loads the library and starts the pump thread; waits up to a few seconds
    /// for the first reading. Never fails: a node without NVML gets [`Nvml::unavailable`]
    /// (logged at info, since most nodes have no NVIDIA GPU).
    pub fn start(host_root: &Path, config: &NvmlConfig) -> Nvml {
        let path = match locate(host_root, &config.library) {
            Ok(path) => path,
            Err(reason) => {
                tracing::info!(%reason, "NVML not used; guests granted `nvml` fall back to sysfs");
                return Nvml::unavailable(reason);
            }
        };
        let nvml = Nvml {
            shared: Arc::new(Shared {
                state: Mutex::new(State::Unavailable(format!(
                    "{} has not finished loading",
                    path.display()
                ))),
                events: EventLog::default(),
                stale_after: config.stale_after,
            }),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let weak = Arc::downgrade(&nvml.shared);
        let refresh = config.refresh;
        let spawned = std::thread::Builder::new()
            .name("nvml".into())
            .spawn(move || pump(&path, weak, refresh, ready_tx));
        if let Err(e) = spawned {
            return Nvml::unavailable(format!("cannot start the NVML thread: {e}"));
        }
        if ready_rx.recv_timeout(FIRST_READING_WAIT).is_err() {
            tracing::warn!(
                "NVML did not answer within {FIRST_READING_WAIT:?} of loading; guests see it unavailable until it does"
            );
        }
        nvml
    }

    /// The latest reading, as guests get it.
    pub fn current(&self) -> Answer {
        match &*self.shared.lock() {
            State::Unavailable(_) => Answer::Unavailable,
            State::Serving { at, .. } if at.elapsed() > self.shared.stale_after => {
                Answer::Failed(format!(
                    "NVML has not answered for {}s; check the driver on the node (`nvidia-smi`)",
                    at.elapsed().as_secs()
                ))
            }
            State::Serving { latest, .. } => match latest {
                Ok(reading) => Answer::Current(reading.clone()),
                Err(e) => Answer::Failed(e.clone()),
            },
        }
    }

    /// Why NVML is not used, or `None` when it is.
    pub fn unavailable_reason(&self) -> Option<String> {
        match &*self.shared.lock() {
            State::Unavailable(reason) => Some(reason.clone()),
            State::Serving { .. } => None,
        }
    }

    /// Which library serves, for the start-up log and `check`.
    pub fn library(&self) -> Option<String> {
        match &*self.shared.lock() {
            State::Unavailable(_) => None,
            State::Serving { library, .. } => Some(library.clone()),
        }
    }

    pub fn events(&self) -> &EventLog {
        &self.shared.events
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The library file to load, or why there is none.
fn locate(host_root: &Path, source: &LibrarySource) -> Result<PathBuf, String> {
    match source {
        LibrarySource::Off => Err("NVML is turned off (--nvml-library off)".into()),
        LibrarySource::Path(path) => Ok(path.clone()),
        LibrarySource::Auto => {
            for dir in SEARCH_DIRS {
                let node_path = format!("{dir}/{LIBRARY}");
                // Resolved as the kernel would under the host root: a link in the node's
                // library directory cannot lead the host to load a file outside it.
                if let Ok(found) = Resolver::new(host_root, vec![PathBuf::from(dir)])
                    .open(&node_path)
                    .map(|f| f.resolved())
                    && found.host.is_file()
                {
                    return Ok(found.host);
                }
            }
            if host_root == Path::new("/") {
                Ok(PathBuf::from(LIBRARY))
            } else {
                Err(format!(
                    "no {LIBRARY} under the host root {} (searched {})",
                    host_root.display(),
                    SEARCH_DIRS.join(", ")
                ))
            }
        }
    }
}

/// The pump: loads the library, then reads the GPUs and waits for events until the last
/// [`Nvml`] handle is gone. `ready` hears once, after the first attempt to read.
fn pump(path: &Path, weak: Weak<Shared>, refresh: Duration, ready: mpsc::Sender<()>) {
    let shown = path.display().to_string();
    let lib = match Library::load(path) {
        Ok(lib) => lib,
        Err(e) => {
            tracing::warn!(library = %shown, error = %e, "NVML cannot be used; guests granted `nvml` fall back to sysfs (check the driver installation, or pass --nvml-library off)");
            if let Some(shared) = weak.upgrade() {
                *shared.lock() = State::Unavailable(e.to_string());
            }
            let _ = ready.send(());
            return;
        }
    };
    tracing::info!(library = %shown, "NVML loaded");
    let mut watch = Watch::default();
    let mut next_read = Instant::now();
    let mut ready = Some(ready);
    while let Some(shared) = weak.upgrade() {
        if Instant::now() >= next_read {
            let latest = match reading::read(&lib) {
                Ok((reading, handles)) => {
                    watch.follow(&lib, &reading, handles);
                    Ok(Arc::new(reading))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the GPUs through NVML failed");
                    Err(e.to_string())
                }
            };
            *shared.lock() = State::Serving {
                library: shown.clone(),
                latest,
                at: Instant::now(),
            };
            next_read = Instant::now() + refresh;
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
        }
        drop(shared);
        if let Some(event) = watch.wait(&lib) {
            if let Some(shared) = weak.upgrade() {
                tracing::warn!(gpu = %event.gpu_uuid, kind = ?event.kind, data = event.data, "NVML reported a critical event");
                shared.events.push(event);
            }
            next_read = next_read.min(Instant::now() + AFTER_EVENT);
        }
    }
    watch.close(&lib);
}

/// The event set and which handle is which GPU.
#[derive(Default)]
struct Watch {
    set: Option<library::EventSet>,
    /// (handle, GPU UUID), as registered.
    gpus: Vec<(library::Device, String)>,
}

impl Watch {
    /// Registers the GPUs of `reading` when they changed (or were never registered).
    fn follow(&mut self, lib: &Library, reading: &Reading, handles: Vec<library::Device>) {
        let gpus: Vec<(library::Device, String)> = handles
            .into_iter()
            .zip(reading.gpus.iter().map(|g| g.uuid.clone()))
            .collect();
        if self.set.is_some() && gpus == self.gpus {
            return;
        }
        self.close(lib);
        let set = match lib.event_set() {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(error = %e, "NVML events unavailable; XIDs are seen through the kernel log only");
                return;
            }
        };
        for (d, uuid) in &gpus {
            if let Err(e) = lib.register_events(*d, &set, EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC)
            {
                tracing::warn!(gpu = %uuid, error = %e, "cannot watch this GPU's NVML events");
            }
        }
        self.set = Some(set);
        self.gpus = gpus;
    }

    /// One bounded wait; the event, if one came for a known GPU and kind.
    fn wait(&self, lib: &Library) -> Option<Event> {
        let Some(set) = &self.set else {
            std::thread::sleep(Duration::from_millis(EVENT_WAIT_MS.into()));
            return None;
        };
        let raw = match lib.wait(set, EVENT_WAIT_MS) {
            Ok(raw) => raw?,
            Err(e) => {
                tracing::debug!(error = %e, "waiting for NVML events failed");
                std::thread::sleep(Duration::from_millis(EVENT_WAIT_MS.into()));
                return None;
            }
        };
        let kind = if raw.event_type & EVENT_XID_CRITICAL != 0 {
            EventKind::Xid
        } else if raw.event_type & EVENT_DOUBLE_BIT_ECC != 0 {
            EventKind::DoubleBitEcc
        } else {
            return None;
        };
        let (_, uuid) = self.gpus.iter().find(|(d, _)| *d == raw.device)?;
        let instance = |id: u32| (id != NO_INSTANCE).then_some(id);
        Some(Event {
            kind,
            gpu_uuid: uuid.clone(),
            gpu_instance_id: instance(raw.gpu_instance_id),
            compute_instance_id: instance(raw.compute_instance_id),
            data: raw.data,
        })
    }

    fn close(&mut self, lib: &Library) {
        if let Some(set) = self.set.take() {
            lib.free_event_set(set);
        }
        self.gpus.clear();
    }
}
