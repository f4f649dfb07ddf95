//! What a guest may hand to a container runtime, held to its policy.
//!
//! The kubelet copies an `Allocate` answer into the CRI request, and containerd, CRI-O,
//! runc and the NVIDIA container toolkit act on every field of it: env (which the
//! toolkit and the dynamic linker read), annotations (which runtimes interpret), mounts,
//! device nodes and CDI names (which pull in a spec's edits). A CDI spec is the same
//! kind of instruction, applied by the runtime as root. So everything a guest hands out
//! is checked here against its [`Grant`](crate::grant::Grant) before anything acts on it:
//! allowlists only, paths judged after resolving them the way the kernel and the runtime
//! will, and a field the host does not understand refused.
//!
//! - [`allocation`]: one container's answer, field by field;
//! - [`cdi_spec`]: a CDI spec a guest asks the host to write;
//! - [`env`], [`annotations`], [`node_paths`], [`cdi_names`]: the rules both share;
//! - [`cdi_ledger`]: which CDI devices a guest defined through the host, so that an
//!   answer can name only those;
//! - [`node_labels`]: the node labels a guest publishes (through Node Feature Discovery).

pub mod allocation;
pub mod annotations;
pub mod cdi_ledger;
pub mod cdi_names;
pub mod cdi_spec;
pub mod env;
pub mod node_labels;
pub mod node_paths;

use std::path::PathBuf;

use thiserror::Error;

use crate::host_root::resolver::Resolver;

pub use allocation::check_allocation;
pub use cdi_ledger::CdiLedger;

/// How the host root's device nodes are told apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceNodes {
    /// A real node: only character and block devices are device nodes.
    #[default]
    Real,
    /// A fixture tree built without root (tests, the demo): a plain file stands in for a
    /// character device whose numbers are unknown (0:0). Never for a real node.
    Simulated,
}

/// The node that hand-outs are checked against: where its `/` is, and how to read its
/// device nodes. Holds the host root open (see [`Resolver`]) so that each check resolves
/// from the same directory without opening it again.
#[derive(Debug, Clone)]
pub struct NodeRoot {
    pub host_root: PathBuf,
    pub device_nodes: DeviceNodes,
    resolver: Resolver,
}

impl NodeRoot {
    pub fn new(host_root: impl Into<PathBuf>, device_nodes: DeviceNodes) -> Self {
        let host_root = host_root.into();
        Self {
            resolver: Resolver::new(&host_root, vec![PathBuf::from("/")]),
            host_root,
            device_nodes,
        }
    }

    /// The node `resolver` reads, sharing its open host root.
    pub fn sharing(resolver: &Resolver, device_nodes: DeviceNodes) -> Self {
        Self {
            host_root: resolver.host_root().to_owned(),
            device_nodes,
            resolver: resolver.with_grant(vec![PathBuf::from("/")]),
        }
    }

    /// Resolves node paths anywhere under the host root (hand-outs are judged by the
    /// grant after resolution, not by a read grant).
    pub(crate) fn resolver(&self) -> &Resolver {
        &self.resolver
    }
}

impl PartialEq for NodeRoot {
    fn eq(&self, other: &Self) -> bool {
        self.host_root == other.host_root && self.device_nodes == other.device_nodes
    }
}

impl Eq for NodeRoot {}

impl From<PathBuf> for NodeRoot {
    /// A real node at `host_root`.
    fn from(host_root: PathBuf) -> Self {
        NodeRoot::new(host_root, DeviceNodes::Real)
    }
}

impl From<&str> for NodeRoot {
    /// A real node at `host_root`.
    fn from(host_root: &str) -> Self {
        NodeRoot::new(host_root, DeviceNodes::Real)
    }
}

/// Why a hand-out was refused: the field, the guest's value (cleaned and quoted, see
/// [`guest_text`](crate::guest_text)) and the rule it broke.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Refused {
    #[error("env {key}: {reason}")]
    Env { key: String, reason: String },
    #[error("annotation {key}: {reason}")]
    Annotation { key: String, reason: String },
    #[error("mount {path}: {reason}")]
    Mount { path: String, reason: String },
    #[error("device {path}: {reason}")]
    Device { path: String, reason: String },
    #[error("CDI device {name}: {reason}")]
    CdiName { name: String, reason: String },
    #[error("CDI spec: {0}")]
    CdiSpec(String),
}

impl Refused {
    pub(crate) fn env(key: &str, reason: impl Into<String>) -> Self {
        Refused::Env {
            key: crate::guest_text::quote(key),
            reason: reason.into(),
        }
    }
    pub(crate) fn annotation(key: &str, reason: impl Into<String>) -> Self {
        Refused::Annotation {
            key: crate::guest_text::quote(key),
            reason: reason.into(),
        }
    }
    pub(crate) fn mount(path: &str, reason: impl Into<String>) -> Self {
        Refused::Mount {
            path: crate::guest_text::quote(path),
            reason: reason.into(),
        }
    }
    pub(crate) fn device(path: &str, reason: impl Into<String>) -> Self {
        Refused::Device {
            path: crate::guest_text::quote(path),
            reason: reason.into(),
        }
    }
    pub(crate) fn cdi_name(name: &str, reason: impl Into<String>) -> Self {
        Refused::CdiName {
            name: crate::guest_text::quote(name),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::grant::{DeviceGrant, Grant, MountGrant, NodeKind};

    /// The grant hand-out tests share: `/dev/widget/*` nodes, `/opt/widget` read-only,
    /// `WIDGET_*` variables and the `example.com/widget` CDI kind.
    pub fn widget_grant() -> Grant {
        Grant {
            devices: vec![DeviceGrant {
                pattern: "/dev/widget/*".into(),
                kind: NodeKind::Char,
            }],
            mounts: vec![MountGrant {
                host_root: "/opt/widget".into(),
                container: "/opt/widget/**".into(),
                writable: false,
            }],
            env: vec!["WIDGET_*".into()],
            cdi_kinds: vec!["example.com/widget".into()],
            ..Grant::none()
        }
    }
}
