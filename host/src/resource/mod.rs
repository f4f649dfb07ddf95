//! Resource service: everything about one advertised resource that is not protocol.
//!
//! It keeps the current device snapshot and publishes only real changes, checks the
//! kubelet's requests against that snapshot (unknown or unhealthy IDs are refused before
//! any guest runs), and checks the guest's answers before the kubelet sees them. It talks
//! to vendor logic through [`backend::Backend`], so it can be tested with a native fake.

pub mod backend;
pub mod name;
pub mod service;
pub mod snapshot;

pub use backend::Backend;
pub use service::{ResourceService, ServiceError};
pub use snapshot::Snapshot;
