//! Guest runtime: the only code that touches wasmtime.
//!
//! One [`engine::Runtime`] per process (one `Engine`, one `Linker`, one epoch ticker).
//! [`loader`] turns a `.wasm` file into a type-checked, pre-linked guest, compiled by the
//! [`compiler`] (in a child process within a budget, in the binary); [`guest`] is the
//! handle callers use; [`worker`] runs each guest on its own thread, which owns the live
//! `Store`, serialises calls, applies the [`limits`], rebuilds the instance after a trap,
//! and is cut loose when a call gets stuck in a host function. Callers never see wasmtime
//! types: they get plain Rust values or a [`GuestError`].

pub mod cache;
pub mod compiler;
mod convert;
pub mod engine;
pub mod error;
pub mod guest;
pub mod inspect;
pub mod loader;
mod refusals;
pub mod signature;
mod state;
pub mod worker;

pub use compiler::{CompileBudget, Compiler};
pub use engine::{Runtime, link_host_functions};
pub use error::GuestError;
pub use guest::Guest;
pub use loader::LoadError;
