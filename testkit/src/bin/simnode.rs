//! `simnode <dir>`: writes a simulated DGX H100 node and the NVIDIA reference guest
//! into `<dir>`, for tests that run the real `wasm-device-plugin` binary from outside
//! Rust (the grpcio interop test in `tests/interop/`):
//!
//! ```text
//! <dir>/root/                       the node: sysfs, procfs, devfs (--host-root)
//! <dir>/guests/nvidia-gpu.wasm      the NVIDIA reference guest (--guests-dir)
//! <dir>/guests/nvidia-gpu.policy.json   its shipped policy
//! <dir>/expected.json               what the fixture holds, for the test to check
//! ```
//!
//! `expected.json` is `{"resource": "nvidia.com/gpu", "gpus": [{"uuid", "address",
//! "minor", "numa_node", "dev_node"}...]}`, written from the fixture itself, not from
//! anything the host computes.

use std::path::PathBuf;
use std::process::ExitCode;

use testkit::SimNode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: simnode <dir>");
        return ExitCode::from(2);
    };
    match write(PathBuf::from(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simnode: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: PathBuf) -> std::io::Result<()> {
    let node = SimNode::dgx_h100(&dir.join("root"))?;
    let guests = dir.join("guests");
    std::fs::create_dir_all(&guests)?;
    std::fs::write(
        guests.join("nvidia-gpu.wasm"),
        testkit::guests::NVIDIA_GPU_WASM,
    )?;
    std::fs::write(
        guests.join("nvidia-gpu.policy.json"),
        testkit::guests::NVIDIA_GPU_POLICY,
    )?;
    let gpus: Vec<String> = node
        .gpus()
        .iter()
        .map(|g| {
            format!(
                r#"{{"uuid": {}, "address": {}, "minor": {}, "numa_node": {}, "dev_node": {}}}"#,
                json_string(&g.uuid),
                json_string(&g.address),
                g.minor,
                g.numa_node,
                json_string(&g.dev_node()),
            )
        })
        .collect();
    let expected = format!(
        "{{\"resource\": \"nvidia.com/gpu\", \"gpus\": [\n  {}\n]}}\n",
        gpus.join(",\n  ")
    );
    std::fs::write(dir.join("expected.json"), expected)?;
    println!("{}", dir.display());
    Ok(())
}

/// A JSON string literal (the fixture's strings are plain ASCII; escape anyway).
fn json_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
