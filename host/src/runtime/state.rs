//! What a guest's `Store` holds.

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::GuestLimits;
use crate::hostfns::NodeAccess;

/// Resource-table handles one guest may hold (WASI streams and the like).
const MAX_TABLE_ENTRIES: usize = 1024;

pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) node: NodeAccess,
}

impl GuestState {
    pub(crate) fn new(node: NodeAccess, limits: &GuestLimits) -> Self {
        // WASI with nothing granted: no preopens, environment, arguments or network; stdout
        // and stderr discarded (guests log through the `log` import instead).
        let wasi = WasiCtxBuilder::new().max_random_size(1 << 20).build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_TABLE_ENTRIES);
        let limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .table_elements(limits.table_elements)
            .instances(limits.instances)
            .tables(limits.instances)
            .memories(limits.instances)
            .trap_on_grow_failure(false)
            .build();
        Self {
            wasi,
            table,
            limits,
            node,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
