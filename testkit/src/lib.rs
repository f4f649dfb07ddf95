//! What the tests and the demo run against, so that neither needs root nor hardware:
//!
//! - [`kubelet::KubeletStandIn`]: plays the kubelet's side of the device plug-in API on a
//!   `kubelet.sock` in a temporary directory, the way the real one does it, and
//!   [`pod_resources::PodResourcesStandIn`] its pod-resources API;
//! - [`simnode::SimNode`]: a sysfs/procfs/devfs fixture tree of a DGX-H100-like node;
//! - [`guests`]: the guests in `guests/`, built for `wasm32-wasip2` by `build.rs`;
//! - [`nvml`]: a test double of NVIDIA's management library, built by `build.rs`, that
//!   [`SimNode::enable_nvml`] installs in a simulated node.

pub mod kubelet;
pub mod pod_resources;
pub mod simnode;

pub use simnode::*;

/// The guests, built for `wasm32-wasip2` by this crate's build script.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The NVML test double (`nvml-double/nvml_double.rs`), built by this crate's build script.
pub mod nvml {
    /// The built `libnvidia-ml.so.1`. Tests use [`crate::SimNode::enable_nvml`], which
    /// copies it into the node's tree beside the files it answers from.
    pub const DOUBLE_PATH: &str = concat!(env!("OUT_DIR"), "/libnvidia-ml.so.1");
}
