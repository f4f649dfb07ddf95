//! What the tests and the demo run against, so that neither needs root nor hardware:
//!
//! - [`kubelet::KubeletStandIn`]: plays the kubelet's side of the device plug-in API on a
//!   `kubelet.sock` in a temporary directory, the way the real one does it, and
//!   [`pod_resources::PodResourcesStandIn`] its pod-resources API;
//! - [`simnode::SimNode`]: a sysfs/procfs/devfs fixture tree of a DGX-H100-like node;
//! - [`guests`]: the guests in `guests/`, built for `wasm32-wasip2` by `build.rs`.

pub mod kubelet;
pub mod pod_resources;
pub mod simnode;

pub use simnode::*;

/// The guests, built for `wasm32-wasip2` by this crate's build script.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}
