//! Builds the guests in `guests/` for `wasm32-wasip2` (release, size-tuned) and writes
//! `guests.rs` with their paths and bytes, so one `cargo test` (or `cargo run -- demo`)
//! builds everything. The guests have their own workspace and target directory, so this
//! nested cargo never waits on the outer build's lock.

use std::path::PathBuf;
use std::process::Command;

/// Guest crates and the constant each becomes in `guests.rs`.
const GUESTS: [(&str, &str); 6] = [
    ("nvidia-gpu", "NVIDIA_GPU"),
    ("conformance", "CONFORMANCE"),
    ("infiniband", "INFINIBAND"),
    ("wrong-world", "WRONG_WORLD"),
    ("template", "TEMPLATE"),
    ("contract-v0-1-0", "CONTRACT_V0_1_0"),
];
/// Library crates of the guests workspace that guests build on (no `.wasm` of their own).
const LIBRARIES: [&str; 1] = ["sdk"];

/// The guests' target, pinned with the toolchain in rust-toolchain.toml.
const GUEST_TARGET: &str = "wasm32-wasip2";

/// Installs the guests' target when the toolchain lacks it. rustup installs what
/// rust-toolchain.toml lists by itself, except where its auto-install is off
/// (`RUSTUP_AUTO_INSTALL=0`); then the first build does it, or says the one command
/// that does.
fn ensure_guest_target(workspace: &std::path::Path) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.as_deref().is_some_and(std::path::Path::is_dir) {
        return;
    }
    println!(
        "cargo:warning=the {GUEST_TARGET} target is not installed; running `rustup target add {GUEST_TARGET}`"
    );
    let added = Command::new("rustup")
        .current_dir(workspace)
        .args(["target", "add", GUEST_TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !added {
        panic!(
            "the guests need the {GUEST_TARGET} target, which is not installed and could not be added: run `rustup target add {GUEST_TARGET}` in the checkout"
        );
    }
}

/// Compiles the NVML test double (one std-only file) into `$OUT_DIR/libnvidia-ml.so.1`,
/// with the same rustc, without Cargo: it is a C library for the tests to `dlopen`, not
/// a crate of this workspace.
fn build_nvml_double(manifest: &std::path::Path) {
    let source = manifest.join("nvml-double/nvml_double.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(env("OUT_DIR")).join("libnvidia-ml.so.1");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition=2021",
            "--crate-type=cdylib",
            "-O",
            "-C",
            "panic=abort",
        ])
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run rustc to build the NVML double: {e}"));
    assert!(
        status.success(),
        "building the NVML double {} failed (see above)",
        source.display()
    );
}

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    build_nvml_double(&manifest);
    let workspace = manifest
        .parent()
        .expect("testkit lives inside the workspace")
        .to_owned();
    let guests = workspace.join("guests");
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.lock").display()
    );
    for krate in GUESTS.map(|(krate, _)| krate).iter().chain(&LIBRARIES) {
        println!("cargo:rerun-if-changed={}", guests.join(krate).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!("cargo:rerun-if-env-changed=WDP_GUESTS_TARGET_DIR");

    // Several checkouts sharing one CARGO_TARGET_DIR would overwrite each other's guests
    // there; WDP_GUESTS_TARGET_DIR gives a checkout a guests directory of its own.
    let own = std::env::var_os("WDP_GUESTS_TARGET_DIR").map(PathBuf::from);
    let target_dir = own.map(Ok).unwrap_or_else(|| Err(()));
    let target_dir = target_dir.unwrap_or_else(|()| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| {
                if t.is_absolute() {
                    t
                } else {
                    workspace.join(t)
                }
            })
            .unwrap_or_else(|| workspace.join("target"))
            .join("guests")
    });
    ensure_guest_target(&workspace);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&guests)
        .args(["build", "--release", "--locked", "--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // What the outer build set for the host must not leak into the guests' build
    // (flags for another target, clippy's wrapper and its -D warnings).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guests: {e}"));
    if !status.success() {
        panic!(
            "building the guests failed (see above). They need the wasm32-wasip2 target: \
             rust-toolchain.toml installs it through rustup, or run `rustup target add wasm32-wasip2`."
        );
    }

    let mut code = String::from("// Generated by testkit/build.rs.\n");
    for (krate, constant) in GUESTS {
        let file = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", krate.replace('-', "_")));
        assert!(
            file.is_file(),
            "the guest build did not produce {}",
            file.display()
        );
        code.push_str(&format!(
            "/// Path of the `{krate}` guest, built for wasm32-wasip2.\n\
             pub const {constant}: &str = {path:?};\n\
             /// Bytes of the `{krate}` guest.\n\
             pub const {constant}_WASM: &[u8] = include_bytes!({path:?});\n",
            path = file.display().to_string(),
        ));
        // The policy shipped with a reference guest, if it has one.
        let policy = guests.join(krate).join("policy.json");
        if policy.is_file() {
            code.push_str(&format!(
                "/// The default policy shipped with the `{krate}` guest.\n\
                 pub const {constant}_POLICY: &str = include_str!({path:?});\n",
                path = policy.display().to_string(),
            ));
        }
    }
    let out = PathBuf::from(env("OUT_DIR")).join("guests.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
