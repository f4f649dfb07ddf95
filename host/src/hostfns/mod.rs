//! Host functions: the WIT imports a guest calls to see the node.
//!
//! One module per WIT interface (`sysfs`, `pci`, `devfs`, `log`), each implementing that
//! interface's `Host` trait on [`NodeAccess`], the per-guest capability object. Every path
//! goes through [`resolver::Resolver`], which applies the host root and the guest's grant.
//! Nothing here traps: failures are WIT `error` values with a message for the operator.
//! These modules know the WIT types but not wasmtime's runtime, so each is testable as
//! plain Rust (call the trait methods directly).

pub mod devfs;
pub mod log;
pub mod pci;
pub mod resolver;
pub mod sysfs;

use std::path::PathBuf;

use crate::wit::latest::types::Error as WitError;
use resolver::{ResolveError, Resolver};

/// What one guest may see of the node.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Node paths (and everything below them) the guest may read.
    pub read_roots: Vec<PathBuf>,
}

impl Default for Grant {
    /// Deny by default, except what every device plug-in needs to enumerate hardware:
    /// sysfs, the driver and device-number tables in procfs, and `/dev`.
    fn default() -> Self {
        Self {
            read_roots: ["/sys", "/proc/driver", "/proc/devices", "/dev"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// The capability object behind every host function of one guest.
#[derive(Debug)]
pub struct NodeAccess {
    guest: String,
    resolver: Resolver,
    log: log::LogLimiter,
}

impl NodeAccess {
    pub fn new(guest: impl Into<String>, host_root: impl Into<PathBuf>, grant: &Grant) -> Self {
        Self {
            guest: guest.into(),
            resolver: Resolver::new(host_root, grant.read_roots.clone()),
            log: log::LogLimiter::default(),
        }
    }

    /// The guest's name, as it appears in logs.
    pub fn guest(&self) -> &str {
        &self.guest
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }
}

impl From<ResolveError> for WitError {
    fn from(e: ResolveError) -> Self {
        let message = e.to_string();
        match e {
            ResolveError::NotAbsolute { .. } | ResolveError::Malformed { .. } => {
                WitError::InvalidArgument(message)
            }
            ResolveError::Denied { .. } => WitError::Denied(message),
            ResolveError::NotFound { .. } => WitError::NotFound(message),
            ResolveError::Loop { .. } | ResolveError::Io { .. } => WitError::Io(message),
        }
    }
}
