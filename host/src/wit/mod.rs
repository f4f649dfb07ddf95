//! Host-side bindings of the guest contract (`wit/`), one module per breaking version.
//!
//! Minor versions of the WIT package only add items, and wasmtime's linker resolves a
//! guest's `@0.1.x` imports against the newest `0.1` the host defines, so one module
//! serves every `0.1` guest. A `since_v0_2` module would sit beside this one (the pattern
//! Zed's extension host uses) when a breaking version arrives.

pub mod since_v0_1;

/// The bindings for the newest contract version, used by the rest of the host.
pub use since_v0_1 as latest;
