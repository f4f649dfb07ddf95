//! Bindings for `wdp:device-plugin@0.1.x`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "device-plugin",
    // Host functions never trap on guest input: every failure is a WIT `error` value.
    imports: { default: tracing },
});

pub use exports::wdp::device_plugin::plugin;

/// The optional `lifecycle` export, looked up on each guest (guests built for the plain
/// `device-plugin` world do not have it, and still link).
pub mod release_hook {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "release-hook",
        with: { "wdp:device-plugin/types": super::wdp::device_plugin::types },
    });

    pub use exports::wdp::device_plugin::lifecycle;
}
/// The optional `node-labels` export, looked up on each guest like the release hook.
pub mod label_source {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "label-source",
        with: { "wdp:device-plugin/types": super::wdp::device_plugin::types },
    });

    pub use exports::wdp::device_plugin::node_labels;
}
pub use wdp::device_plugin::{cdi, devfs, kmsg, log, nvml, pci, sysfs, types};

/// The contract version this module implements, for logs and `inspect`.
pub const VERSION: &str = "0.1.2";
