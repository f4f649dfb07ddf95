//! The CDI devices a guest defined through the host.
//!
//! A CDI name in an answer makes the runtime apply that device's edits from whatever
//! spec on the node defines it, including specs the guest did not write (nvidia-ctk's
//! `nvidia.com/gpu=all`, another plug-in's). So an answer may name only devices of a spec
//! this guest wrote through the host, as the host last checked and wrote it. The ledger
//! lives as long as the guest (it is shared by every instance of it), so a rebuilt
//! instance keeps what it wrote; after a host restart a guest writes its spec again
//! before it names devices in it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Per CDI kind, the device names of the spec this guest last wrote.
#[derive(Debug, Clone, Default)]
pub struct CdiLedger(Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>);

impl CdiLedger {
    /// The spec of `kind` now defines exactly `devices` (unqualified names).
    pub fn record(&self, kind: &str, devices: impl IntoIterator<Item = String>) {
        self.lock()
            .insert(kind.to_owned(), devices.into_iter().collect());
    }

    /// The spec of `kind` was removed.
    pub fn forget(&self, kind: &str) {
        self.lock().remove(kind);
    }

    /// Whether the guest's spec of `kind` defines `device`.
    pub fn defines(&self, kind: &str, device: &str) -> bool {
        self.lock().get(kind).is_some_and(|d| d.contains(device))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replaces_and_forgets() {
        let ledger = CdiLedger::default();
        let shared = ledger.clone();
        ledger.record("example.com/w", ["w0".to_string(), "w1".to_string()]);
        assert!(shared.defines("example.com/w", "w1"));
        ledger.record("example.com/w", ["w0".to_string()]);
        assert!(
            !shared.defines("example.com/w", "w1"),
            "a new spec replaces the old"
        );
        assert!(!shared.defines("example.com/other", "w0"));
        ledger.forget("example.com/w");
        assert!(!shared.defines("example.com/w", "w0"));
    }
}
