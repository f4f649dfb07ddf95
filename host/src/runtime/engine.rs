//! The process-wide wasmtime engine, linker and epoch ticker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use std::sync::atomic::AtomicU64;

use super::cache::CompileCache;
use super::compiler::Compiler;
use super::refusals::Refusals;
use super::signature::TrustedKeys;
use super::state::GuestState;
use crate::handout::DeviceNodes;
use crate::hostfns::NodeAccess;
use crate::nvml::Nvml;
use crate::policy::GuestLimits;
use crate::wit::latest;

/// How often the epoch advances; wall-clock deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One engine and linker for every guest (mixing engines has been a wasmtime bug class),
/// plus what every guest's host functions need: the host root and the CDI directory.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<GuestState>>,
    pub(crate) limits: GuestLimits,
    pub(crate) host_root: PathBuf,
    pub(crate) cdi_dir: PathBuf,
    pub(crate) device_nodes: DeviceNodes,
    pub(crate) cache: Option<CompileCache>,
    pub(crate) compiler: Compiler,
    pub(crate) refusals: Arc<Refusals>,
    pub(crate) trusted: Option<TrustedKeys>,
    pub(crate) stats: Arc<LoadStats>,
    /// Per guest name, its threads stuck in host calls, across reloads.
    stuck: std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::atomic::AtomicUsize>>>,
    /// The newest kernel-log record when the host started. Every version of a guest
    /// reads the kernel log from there: what was logged before a restart or rollout is
    /// not replayed, and a reloaded guest (a ConfigMap edit) learns again what happened
    /// since the start instead of forgetting it.
    pub(crate) kmsg_start: i64,
    /// The node's NVML, shared by every guest granted it (unavailable until set).
    pub(crate) nvml: Nvml,
}

/// Counts of how guests were obtained, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Guests compiled from `.wasm`.
    pub compiled: AtomicU64,
    /// Guests loaded from the compiled-artifact cache.
    pub cache_hits: AtomicU64,
    /// Compiles stopped for their budget (timeout, memory, crash).
    pub refused: AtomicU64,
    /// Guests refused at once, without compiling, because compiling the same content
    /// was refused before (in this process or, through the cache directory, an earlier
    /// one).
    pub refusals_remembered: AtomicU64,
}

impl Runtime {
    /// Builds the engine, links WASI (empty) and the host functions, and starts the
    /// epoch ticker, which stops by itself when the engine is dropped.
    /// `limits` apply to guests loaded without limits of their own.
    pub fn new(
        host_root: impl Into<PathBuf>,
        cdi_dir: impl Into<PathBuf>,
        limits: GuestLimits,
    ) -> wasmtime::Result<Self> {
        let host_root = host_root.into();
        let kmsg_start = crate::hostfns::kmsg::newest_sequence(&host_root);
        let engine = Engine::new(&engine_config())?;

        let mut linker: Linker<GuestState> = Linker::new(&engine);
        // Rust's wasm32-wasip2 std imports WASI even when a guest never uses it; the
        // context behind it grants nothing (see `GuestState::new`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        link_host_functions(&mut linker, node_access)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

        Ok(Self {
            engine,
            linker: Arc::new(linker),
            limits,
            host_root,
            cdi_dir: cdi_dir.into(),
            device_nodes: DeviceNodes::Real,
            cache: None,
            compiler: Compiler::default(),
            refusals: Arc::default(),
            trusted: None,
            stats: Arc::default(),
            stuck: Default::default(),
            kmsg_start,
            nvml: Nvml::unavailable("not configured"),
        })
    }

    /// Offers `nvml` to guests granted it (see `crate::nvml`).
    pub fn with_nvml(mut self, nvml: Nvml) -> Self {
        self.nvml = nvml;
        self
    }

    /// How device nodes under the host root are read (simulated only for fixtures).
    pub fn with_device_nodes(mut self, device_nodes: DeviceNodes) -> Self {
        self.device_nodes = device_nodes;
        self
    }

    /// The count of `guest`'s threads stuck in host calls, shared by all its versions.
    pub(crate) fn stuck_counter(&self, guest: &str) -> Arc<std::sync::atomic::AtomicUsize> {
        self.stuck
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(guest.to_owned())
            .or_default()
            .clone()
    }

    /// Keeps compiled guests in `cache`, so that a restart does not compile them again
    /// (nor try again a guest whose compile was refused).
    pub fn with_cache(mut self, cache: CompileCache) -> Self {
        self.refusals = Arc::new(Refusals::new(Some(cache.dir().to_owned())));
        self.cache = Some(cache);
        self
    }

    /// Compiles guests with `compiler` (in process, without a budget, by default).
    pub fn with_compiler(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
    }

    /// Loads only guests signed by one of `keys`.
    pub fn with_trusted_keys(mut self, keys: TrustedKeys) -> Self {
        self.trusted = Some(keys);
        self
    }

    /// How guests were obtained so far.
    pub fn stats(&self) -> Arc<LoadStats> {
        self.stats.clone()
    }

    pub fn limits(&self) -> &GuestLimits {
        &self.limits
    }
}

/// The one wasmtime configuration of this host. The compiler child process builds its
/// engine from it too: compiled code is only loadable by an engine with the same
/// settings, so the two must never drift apart.
pub(crate) fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    config
}

fn node_access(state: &mut GuestState) -> &mut NodeAccess {
    &mut state.node
}

/// Links every host function of the contract (`hostfns`) for a store whose data holds a
/// [`NodeAccess`] where `get` finds it. One list for the host and anything that builds
/// its own linker (the benchmarks), so that no import is forgotten in one of them.
pub fn link_host_functions<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut NodeAccess,
) -> wasmtime::Result<()> {
    latest::sysfs::add_to_linker::<_, HasSelf<NodeAccess>>(linker, get)?;
    latest::pci::add_to_linker::<_, HasSelf<NodeAccess>>(linker, get)?;
    latest::devfs::add_to_linker::<_, HasSelf<NodeAccess>>(linker, get)?;
    latest::log::add_to_linker::<_, HasSelf<NodeAccess>>(linker, get)?;
    latest::cdi::add_to_linker::<_, HasSelf<NodeAccess>>(linker, get)?;
    latest::kmsg::add_to_linker::<_, HasSelf<NodeAccess>>(linker, get)?;
    latest::nvml::add_to_linker::<_, HasSelf<NodeAccess>>(linker, get)?;
    Ok(())
}

/// Epoch ticks for a wall-clock budget, rounded up, at least one.
pub(crate) fn ticks(budget: Duration) -> u64 {
    (budget.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1
}
