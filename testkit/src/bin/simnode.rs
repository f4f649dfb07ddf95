//! `simnode <dir> [--nvml]`: writes a simulated DGX H100 node and the NVIDIA reference
//! guest into `<dir>`, for tests that run the real `wasm-device-plugin` binary from
//! outside Rust (the grpcio interop test in `tests/interop/`, the container tests in
//! `tests/container/`):
//!
//! ```text
//! <dir>/root/                       the node: sysfs, procfs, devfs (--host-root)
//! <dir>/guests/nvidia-gpu.wasm      the NVIDIA reference guest (--guests-dir)
//! <dir>/guests/nvidia-gpu.policy.json   its shipped policy
//! <dir>/expected.json               what the fixture holds, for the test to check
//! ```
//!
//! `--nvml` also installs testkit's NVML double as the node's
//! `/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1`, with the fixture it answers from
//! beside it (`SimNode::enable_nvml`): a glibc shared library, which a host that can
//! `dlopen` loads from the node like NVIDIA's.
//!
//! `expected.json` is `{"resource": "nvidia.com/gpu", "gpus": [{"uuid", "address",
//! "minor", "numa_node", "dev_node"}...], "nvml": null | {"library", "driver"}}` (the
//! library as a node path), written from the fixture itself, not from anything the host
//! computes.

use std::path::PathBuf;
use std::process::ExitCode;

use testkit::SimNode;

fn main() -> ExitCode {
    let mut dir = None;
    let mut nvml = false;
    for arg in std::env::args_os().skip(1) {
        if arg == "--nvml" {
            nvml = true;
        } else if dir.is_none() && !arg.to_string_lossy().starts_with("--") {
            dir = Some(PathBuf::from(arg));
        } else {
            dir = None;
            break;
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: simnode <dir> [--nvml]");
        return ExitCode::from(2);
    };
    match write(dir, nvml) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simnode: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: PathBuf, nvml: bool) -> std::io::Result<()> {
    let mut node = SimNode::dgx_h100(&dir.join("root"))?;
    let nvml = if nvml {
        node.enable_nvml()?;
        format!(
            "{{\"library\": {}, \"driver\": {}}}",
            json_string(testkit::simnode::NVML_LIBRARY),
            json_string(testkit::simnode::NVML_DRIVER_VERSION)
        )
    } else {
        "null".to_owned()
    };
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
        "{{\"resource\": \"nvidia.com/gpu\", \"gpus\": [\n  {}\n], \"nvml\": {nvml}}}\n",
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
