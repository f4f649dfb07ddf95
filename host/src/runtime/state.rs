//! What a guest's `Store` holds.

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::hostfns::NodeAccess;
use crate::policy::GuestLimits;

/// Resource-table handles one guest may hold (WASI streams and the like).
const MAX_TABLE_ENTRIES: usize = 1024;

pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limiter,
    pub(crate) node: NodeAccess,
}

impl GuestState {
    pub(crate) fn new(node: NodeAccess, limits: &GuestLimits) -> Self {
        // WASI with nothing granted: no preopens, environment, arguments or network; stdout
        // and stderr discarded (guests log through the `log` import instead).
        let wasi = WasiCtxBuilder::new().max_random_size(1 << 20).build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_TABLE_ENTRIES);
        let store_limits = StoreLimitsBuilder::new()
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
            limits: Limiter {
                inner: store_limits,
                memory_refused: None,
            },
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

/// wasmtime's store limits, remembering a refused memory growth: a Rust guest whose
/// allocation fails aborts with a plain `unreachable` trap, and the operator should be
/// told that the memory limit, not a bug, was the cause.
pub(crate) struct Limiter {
    inner: StoreLimits,
    /// The size a refused `memory.grow` asked for.
    pub(crate) memory_refused: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.memory_refused = Some(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
