//! wasm-device-plugin: a Kubernetes device plug-in host whose vendor logic runs as
//! sandboxed WebAssembly components.
//!
//! The layers, in the one direction data flows through them:
//!
//! ```text
//! kubelet ──▶ kubelet ──▶ resource ──▶ runtime ──▶ hostfns ──▶ host root
//!             (v1beta1    (snapshot,   (wasmtime,  (WIT imports,  (/ on a node,
//!              gRPC, re-   checks on    one thread  each path      a fixture tree
//!              registration) requests    per guest,  checked        in tests)
//!                          and answers) limits)     against grant)
//! ```
//!
//! [`node`] assembles them from a [`node::HostConfig`]; [`device`] is the vocabulary
//! they share; [`wit`] holds the generated bindings of the guest contract.

pub mod device;
pub mod grant;
pub mod guest_text;
pub mod handout;
pub mod host_root;
pub mod hostfns;
pub mod kubelet;
pub mod metrics;
pub mod node;
pub mod nvml;
pub mod policy;
pub mod readiness;
pub mod resource;
pub mod runtime;
pub mod shutdown;
pub mod wit;
