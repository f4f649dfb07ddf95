//! The host's compiler child, `wasm-device-plugin compile-guest`, as a binary of this
//! package: cargo builds it (with the same host library as the tests) before it runs
//! the tests, which find it as `CARGO_BIN_EXE_compile-child`. The host binary itself
//! is not built for another package's tests, and building it from inside a test would
//! contend for the target directory's lock.

use std::process::ExitCode;

fn main() -> ExitCode {
    let verb = std::env::args().nth(1);
    if verb.as_deref() != Some(wasm_device_plugin::runtime::compiler::CHILD_VERB) {
        eprintln!(
            "usage: compile-child {} < component.wasm > component.cwasm",
            wasm_device_plugin::runtime::compiler::CHILD_VERB
        );
        return ExitCode::from(2);
    }
    ExitCode::from(wasm_device_plugin::runtime::compiler::run_child())
}
