//! Host functions: the WIT imports a guest calls to see the node.
//!
//! One module per WIT interface (`sysfs`, `pci`, `devfs`, `log`), each implementing that
//! interface's `Host` trait on [`NodeAccess`], the per-guest capability object. Every path
//! goes through [`crate::host_root::resolver::Resolver`], which applies the host root and the guest's grant
//! and opens the node in the same step ([`crate::host_root::node_file::NodeFile`]).
//! Nothing here traps: failures are WIT `error` values with a message for the operator.
//! These modules know the WIT types but not wasmtime's runtime, so each is testable as
//! plain Rust (call the trait methods directly).

pub mod cdi;
pub mod devfs;
pub mod kmsg;
pub mod log;
pub mod nvml;
pub mod pci;
pub mod sysfs;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::grant::Grant;
use crate::handout::{CdiLedger, DeviceNodes, NodeRoot};
use crate::host_root::resolver::{ResolveError, Resolver};
use crate::wit::latest::types::Error as WitError;

/// The capability object behind every host function of one guest. Cloned into each
/// new instance of the guest, so state that must survive an instance rebuild (the
/// kernel-log cursor, the log budget) is shared.
#[derive(Debug, Clone)]
pub struct NodeAccess {
    guest: Arc<str>,
    resolver: Resolver,
    grant: Arc<Grant>,
    cdi_dir: PathBuf,
    cdi_ledger: CdiLedger,
    device_nodes: DeviceNodes,
    kmsg_seen: Arc<AtomicI64>,
    nvml: crate::nvml::Nvml,
    /// The next NVML event this guest has not been handed.
    nvml_events_next: Arc<AtomicU64>,
    log: Arc<Mutex<log::LogLimiter>>,
}

impl NodeAccess {
    /// `cdi_dir` is the node path of the CDI spec directory (`/var/run/cdi`).
    pub fn new(
        guest: &str,
        host_root: impl Into<PathBuf>,
        grant: Arc<Grant>,
        cdi_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            guest: guest.into(),
            resolver: Resolver::new(host_root, grant.read_roots.clone()),
            grant,
            cdi_dir: cdi_dir.into(),
            cdi_ledger: CdiLedger::default(),
            device_nodes: DeviceNodes::Real,
            kmsg_seen: Arc::new(AtomicI64::new(kmsg::NOTHING_SEEN)),
            nvml: crate::nvml::Nvml::unavailable("not configured"),
            nvml_events_next: Arc::default(),
            log: Arc::default(),
        }
    }

    /// How device nodes are read under the host root (simulated only for fixtures).
    pub fn with_device_nodes(mut self, device_nodes: DeviceNodes) -> Self {
        self.device_nodes = device_nodes;
        self
    }

    /// Reads the kernel log after record `seq` only (the newest when the host started,
    /// see [`kmsg::newest_sequence`]): older records are not news.
    pub fn with_kmsg_start(mut self, seq: i64) -> Self {
        self.kmsg_seen = Arc::new(AtomicI64::new(seq));
        self
    }

    /// Reads the host's NVML (when the grant allows), from its first event on.
    pub fn with_nvml(mut self, nvml: crate::nvml::Nvml) -> Self {
        self.nvml = nvml;
        self
    }

    /// The CDI devices this guest wrote through the host, shared with every clone.
    pub fn cdi_ledger(&self) -> &CdiLedger {
        &self.cdi_ledger
    }

    /// The node hand-outs are checked against.
    pub fn node_root(&self) -> NodeRoot {
        NodeRoot::sharing(&self.resolver, self.device_nodes)
    }

    /// The guest's name, as it appears in logs.
    pub fn guest(&self) -> &str {
        &self.guest
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub fn grant(&self) -> &Grant {
        &self.grant
    }
}

impl From<ResolveError> for WitError {
    fn from(e: ResolveError) -> Self {
        let message = e.to_string();
        match e {
            ResolveError::NotAbsolute { .. } | ResolveError::Malformed { .. } => {
                WitError::InvalidArgument(message)
            }
            ResolveError::Denied { .. } | ResolveError::MagicLink { .. } => {
                WitError::Denied(message)
            }
            ResolveError::NotFound { .. } => WitError::NotFound(message),
            ResolveError::Loop { .. } | ResolveError::Io { .. } => WitError::Io(message),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// What the reference guests need to read: sysfs, the driver tables in procfs, /dev.
    pub fn reader(root: &std::path::Path) -> NodeAccess {
        let grant = Grant {
            read_roots: ["/sys", "/proc/driver", "/proc/devices", "/dev"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            ..Grant::none()
        };
        NodeAccess::new("t", root, Arc::new(grant), "/var/run/cdi")
    }

    /// `access` as it runs where the kernel lacks `openat2`.
    pub fn fallback(mut access: NodeAccess) -> NodeAccess {
        access.resolver = access.resolver.force_fallback();
        access
    }
}
