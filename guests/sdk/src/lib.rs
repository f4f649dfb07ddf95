//! The guest side of `wdp:device-plugin`: a vendor implements [`Plugin`] and calls
//! [`export!`] once; the bindings generated from `wit/` live here, so a guest crate
//! depends on this crate alone.
//!
//! ```ignore
//! use wdp_guest_sdk::{Plugin, types::*};
//!
//! struct Widget;
//!
//! impl Plugin for Widget {
//!     fn configure(_config: &str) -> Result<Self, Error> { Ok(Widget) }
//!     fn resources(&self) -> Result<Vec<ResourceSpec>, Error> { /* ... */ }
//!     fn list_devices(&mut self, resource: &str) -> Result<Vec<Device>, Error> { /* ... */ }
//!     fn allocate(&mut self, resource: &str, containers: &[Vec<String>])
//!         -> Result<Vec<ContainerAllocation>, Error> { /* ... */ }
//! }
//!
//! wdp_guest_sdk::export!(Widget);
//! ```
//!
//! Helpers, each small so that a guest pays only for what it calls (guests must stay
//! under ~190 KiB to fit a client-side-applied ConfigMap): [`pci`] filters, [`attr`]
//! for sysfs/procfs text, [`dev`] for device nodes, [`alloc`] for allocations, [`cdi`]
//! for CDI specs, [`json`] for configuration and JSON text, [`error`] and [`log`].

// The generated code names this crate by its public name, also from inside it.
extern crate self as wdp_guest_sdk;

pub mod alloc;
pub mod attr;
pub mod cdi;
pub mod dev;
pub mod error;
pub mod json;
pub mod log;
pub mod pci;
mod plugin;

#[doc(hidden)]
pub use plugin::Adapter;
pub use plugin::Plugin;

/// The generated bindings. Guests use [`types`] and [`host`]; the rest is for [`export!`].
#[doc(hidden)]
pub mod bindings {
    #[cfg(all(not(feature = "release"), not(feature = "labels")))]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "device-plugin",
        pub_export_macro: true,
        default_bindings_module: "wdp_guest_sdk::bindings",
        runtime_path: "wdp_guest_sdk::bindings::wit_bindgen_rt",
    });
    #[cfg(all(feature = "release", not(feature = "labels")))]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "device-plugin-with-release",
        pub_export_macro: true,
        default_bindings_module: "wdp_guest_sdk::bindings",
        runtime_path: "wdp_guest_sdk::bindings::wit_bindgen_rt",
    });
    #[cfg(all(not(feature = "release"), feature = "labels"))]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "device-plugin-with-labels",
        pub_export_macro: true,
        default_bindings_module: "wdp_guest_sdk::bindings",
        runtime_path: "wdp_guest_sdk::bindings::wit_bindgen_rt",
    });
    #[cfg(all(feature = "release", feature = "labels"))]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "device-plugin-with-release-and-labels",
        pub_export_macro: true,
        default_bindings_module: "wdp_guest_sdk::bindings",
        runtime_path: "wdp_guest_sdk::bindings::wit_bindgen_rt",
    });

    /// The runtime the generated code calls, reachable through this crate so that guests
    /// need no `wit-bindgen` dependency of their own.
    pub use wit_bindgen::rt as wit_bindgen_rt;
}

/// The contract's records and variants (`device`, `error`, `pci-device`, ...).
pub mod types {
    pub use crate::bindings::wdp::device_plugin::types::*;
}

/// The host functions a guest may import; each needs a grant in the guest's policy.
pub mod host {
    pub use crate::bindings::wdp::device_plugin::{cdi, devfs, kmsg, log, nvml, pci, sysfs};
}

/// Exports `$ty` (which implements [`Plugin`]) as this component's `plugin` interface.
/// Call it once, at the crate root of the guest.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        const _: () = {
            type WdpGuestSdkAdapter = $crate::Adapter<$ty>;
    $crate::bindings::export!(WdpGuestSdkAdapter with_types_in $crate::bindings);
        };
    };
}
