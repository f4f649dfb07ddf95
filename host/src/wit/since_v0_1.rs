//! Bindings for `wdp:device-plugin@0.1.x`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "device-plugin",
    // Host functions never trap on guest input: every failure is a WIT `error` value.
    imports: { default: tracing },
});

pub use exports::wdp::device_plugin::plugin;
pub use wdp::device_plugin::{cdi, devfs, kmsg, log, pci, sysfs, types};

/// The contract version this module implements, for logs and `inspect`.
pub const VERSION: &str = "0.1.1";
