//! What one guest may consume: memory, wall-clock time per call, instances and host data.

use std::time::Duration;

/// Limits applied to every guest. The defaults are generous for enumeration and
/// allocation logic (a real guest uses a few MiB and microseconds) and small enough that
/// a runaway guest cannot hurt the node or delay a pod start noticeably.
#[derive(Debug, Clone)]
pub struct GuestLimits {
    /// Largest linear memory, in bytes. Default 64 MiB.
    pub memory_bytes: usize,
    /// Most elements in one table. Default 10,000.
    pub table_elements: usize,
    /// Most core instances, tables and memories one component may create. Default 32.
    pub instances: usize,
    /// Most bytes copied across the boundary in one call, either way (arguments of host
    /// functions, results of exports). Default 4 MiB, the kubelet's message limit.
    pub hostcall_bytes: usize,
    /// Largest `.wasm` accepted. Default 1 MiB, the size of a ConfigMap.
    pub max_wasm_bytes: u64,
    /// Wall-clock budget per export call (epoch interruption counts elapsed time, not
    /// CPU time: a guest waiting in a host function uses it up too).
    pub deadlines: CallDeadlines,
    /// How long a guest that keeps faulting stays degraded (its devices Unhealthy) after
    /// its last fault. Default 30 s.
    pub fault_cooldown: Duration,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            table_elements: 10_000,
            instances: 32,
            hostcall_bytes: 4 << 20,
            max_wasm_bytes: 1 << 20,
            deadlines: CallDeadlines::default(),
            fault_cooldown: Duration::from_secs(30),
        }
    }
}

/// Per-export deadlines. A call that runs past its deadline is interrupted (epoch
/// interruption), fails with `DeadlineExceeded`, and the instance is rebuilt.
#[derive(Debug, Clone)]
pub struct CallDeadlines {
    /// Instantiation plus `configure`. Default 5 s.
    pub configure: Duration,
    /// `resources` and `list-devices`. Default 2 s.
    pub enumerate: Duration,
    /// `allocate`. Default 2 s: the kubelet waits on it with no deadline of its own.
    pub allocate: Duration,
    /// `preferred-allocation`. Default 1 s.
    pub preferred_allocation: Duration,
    /// `pre-start`. Default 10 s (device resets are slow); the kubelet allows 30 s.
    pub pre_start: Duration,
}

impl Default for CallDeadlines {
    fn default() -> Self {
        Self {
            configure: Duration::from_secs(5),
            enumerate: Duration::from_secs(2),
            allocate: Duration::from_secs(2),
            preferred_allocation: Duration::from_secs(1),
            pre_start: Duration::from_secs(10),
        }
    }
}

impl CallDeadlines {
    /// Every deadline set to `d` (tests use short ones).
    pub fn all(d: Duration) -> Self {
        Self {
            configure: d,
            enumerate: d,
            allocate: d,
            preferred_allocation: d,
            pre_start: d,
        }
    }
}
