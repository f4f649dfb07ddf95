//! The host's wasmtime set-up rebuilt here (same `Config`, same linker contents, same
//! store limits and host-function state), so that each step the host takes inside
//! `Runtime::load` and `Guest::call` can be timed on its own: compile, load from the
//! cache, deserialize, pre-link, instantiate + configure, and export calls without the
//! host's hop to the guest's thread. Mirrors `host/src/runtime/{engine,state,guest}.rs`.

use std::path::Path;
use std::sync::Arc;

use wasm_device_plugin::grant::Grant;
use wasm_device_plugin::hostfns::NodeAccess;
use wasm_device_plugin::policy::GuestLimits;
use wasm_device_plugin::wit::latest::{DevicePlugin, DevicePluginPre};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    node: NodeAccess,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn node_access(state: &mut RawState) -> &mut NodeAccess {
    &mut state.node
}

/// Engine and linker configured as `Runtime::new` configures them.
pub struct Raw {
    pub engine: Engine,
    pub linker: Linker<RawState>,
    limits: GuestLimits,
}

impl Raw {
    pub fn new() -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker: Linker<RawState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        wasm_device_plugin::runtime::link_host_functions(&mut linker, node_access)?;
        Ok(Self {
            engine,
            linker,
            limits: GuestLimits::default(),
        })
    }

    pub fn compile(&self, wasm: &[u8]) -> wasmtime::Result<Component> {
        Component::new(&self.engine, wasm)
    }

    pub fn pre(&self, component: &Component) -> wasmtime::Result<DevicePluginPre<RawState>> {
        DevicePluginPre::new(self.linker.instantiate_pre(component)?)
    }

    /// A store as `Worker::instantiate` builds it (limits, host-call fuel, deadline).
    pub fn store(&self, root: &Path, grant: &Arc<Grant>) -> Store<RawState> {
        let limits = &self.limits;
        let state = RawState {
            wasi: WasiCtxBuilder::new().max_random_size(1 << 20).build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(limits.table_elements)
                .instances(limits.instances)
                .tables(limits.instances)
                .memories(limits.instances)
                .trap_on_grow_failure(false)
                .build(),
            node: NodeAccess::new("raw", root, grant.clone(), "/var/run/cdi"),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_hostcall_fuel(limits.hostcall_bytes);
        store.epoch_deadline_trap();
        // Nothing advances this engine's epoch: the deadline never fires.
        store.set_epoch_deadline(1);
        store
    }
}

/// wasmtime's error as an `anyhow` one, with its chain.
pub fn werr(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// A live instance with its store, configured.
pub struct Live {
    pub store: Store<RawState>,
    pub plugin: DevicePlugin,
}

impl Live {
    pub fn start(
        raw: &Raw,
        pre: &DevicePluginPre<RawState>,
        root: &Path,
        grant: &Arc<Grant>,
        config: &str,
    ) -> anyhow::Result<Live> {
        let mut store = raw.store(root, grant);
        let plugin = pre.instantiate(&mut store).map_err(werr)?;
        plugin
            .wdp_device_plugin_plugin()
            .call_configure(&mut store, config)
            .map_err(werr)?
            .map_err(|e| anyhow::anyhow!("configure: {e:?}"))?;
        Ok(Live { store, plugin })
    }

    pub fn resources(&mut self) -> anyhow::Result<usize> {
        let r = self
            .plugin
            .wdp_device_plugin_plugin()
            .call_resources(&mut self.store)
            .map_err(werr)?
            .map_err(|e| anyhow::anyhow!("resources: {e:?}"))?;
        Ok(r.len())
    }

    pub fn list_devices(&mut self, resource: &str) -> anyhow::Result<usize> {
        let r = self
            .plugin
            .wdp_device_plugin_plugin()
            .call_list_devices(&mut self.store, resource)
            .map_err(werr)?
            .map_err(|e| anyhow::anyhow!("list-devices: {e:?}"))?;
        Ok(r.len())
    }

    pub fn allocate(
        &mut self,
        resource: &str,
        containers: &[Vec<String>],
    ) -> anyhow::Result<usize> {
        let r = self
            .plugin
            .wdp_device_plugin_plugin()
            .call_allocate(&mut self.store, resource, containers)
            .map_err(werr)?
            .map_err(|e| anyhow::anyhow!("allocate: {e:?}"))?;
        Ok(r.len())
    }
}
