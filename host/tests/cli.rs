//! The binary's offline commands, as an operator runs them: `check` against a fixture,
//! `inspect`, `compile`, `keygen` + `sign`, and the config file's place in the
//! precedence (flags, then environment, then the file).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_wasm-device-plugin");

/// A DGX fixture and a guests directory with the NVIDIA guest and its policy.
fn node() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    testkit::SimNode::dgx_h100(&root).expect("fixture");
    let guests = dir.path().join("guests");
    std::fs::create_dir_all(&guests).unwrap();
    std::fs::write(
        guests.join("nvidia-gpu.wasm"),
        testkit::guests::NVIDIA_GPU_WASM,
    )
    .unwrap();
    std::fs::write(
        guests.join("nvidia-gpu.policy.json"),
        testkit::guests::NVIDIA_GPU_POLICY,
    )
    .unwrap();
    (dir, root, guests)
}

fn run(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("WDP_GUESTS_DIR")
        .env_remove("WDP_HOST_ROOT")
        .env_remove("WDP_CONFIG");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("run the binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `check` prints what would be advertised and fails when something is refused.
#[test]
fn check_shows_what_would_be_advertised() {
    let (_dir, root, guests) = node();
    let ok = run(
        &[
            "check",
            // The fixture's device nodes are plain files.
            "--simulated-node",
            "--host-root",
            &root.display().to_string(),
            "--guests-dir",
            &guests.display().to_string(),
        ],
        &[],
    );
    assert!(ok.status.success(), "{ok:?}");
    let text = stdout(&ok);
    assert!(text.contains("nvidia.com/gpu"), "{text}");
    assert_eq!(text.matches("Healthy").count(), 8, "{text}");

    std::fs::write(guests.join("broken.wasm"), "nope").unwrap();
    std::fs::write(guests.join("broken.policy.json"), "{}").unwrap();
    let refused = run(
        &[
            "check",
            // The fixture's device nodes are plain files.
            "--simulated-node",
            "--host-root",
            &root.display().to_string(),
            "--guests-dir",
            &guests.display().to_string(),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        stdout(&refused).contains("not a WebAssembly binary"),
        "{refused:?}"
    );
}

/// Flags beat the environment, the environment beats the config file, the file beats
/// the built-in default.
#[test]
fn config_file_environment_and_flags_in_that_order() {
    let (dir, root, guests) = node();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"host-root": "{}", "guests-dir": "{}"}}"#,
            root.display(),
            guests.display()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let from_file = run(&["check", "--config", &config_arg], &[]);
    assert!(
        stdout(&from_file).contains("nvidia.com/gpu"),
        "the file sets the guests: {from_file:?}"
    );
    let env_wins = run(
        &["check", "--config", &config_arg],
        &[("WDP_GUESTS_DIR", &empty)],
    );
    assert!(
        stdout(&env_wins).contains("nothing would be advertised"),
        "the environment beats the file: {env_wins:?}"
    );
    let flag_wins = run(
        &[
            "check",
            "--config",
            &config_arg,
            "--guests-dir",
            &guests.display().to_string(),
        ],
        &[("WDP_GUESTS_DIR", &empty)],
    );
    assert!(
        stdout(&flag_wins).contains("nvidia.com/gpu"),
        "the flag beats the environment: {flag_wins:?}"
    );
}

/// `inspect` names the contract, the imports and the resources; `compile` fills the
/// cache once; `keygen` + `sign` produce a signature `inspect` verifies.
#[test]
fn inspect_compile_and_sign() {
    let (dir, root, guests) = node();
    let wasm = guests.join("nvidia-gpu.wasm").display().to_string();
    let root_arg = root.display().to_string();
    let text = stdout(&run(&["inspect", &wasm, "--host-root", &root_arg], &[]));
    for expected in [
        "wdp:device-plugin@0.1",
        "wdp:device-plugin/sysfs@0.1",
        "nvidia.com/gpu",
        "unsigned",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }

    let cache = dir.path().join("cache").display().to_string();
    let first = stdout(&run(&["compile", "--cache-dir", &cache, &wasm], &[]));
    let second = stdout(&run(&["compile", "--cache-dir", &cache, &wasm], &[]));
    assert!(
        first.contains("Compiled") && second.contains("Hit"),
        "{first} / {second}"
    );

    let key = dir.path().join("ops");
    assert!(
        run(&["keygen", "--out", &key.display().to_string()], &[])
            .status
            .success()
    );
    let signed = run(
        &[
            "sign",
            "--key",
            &key.with_extension("key").display().to_string(),
            &wasm,
        ],
        &[],
    );
    assert!(signed.status.success(), "{signed:?}");
    let trusted = key.with_extension("pub").display().to_string();
    let text = stdout(&run(
        &[
            "inspect",
            &wasm,
            "--host-root",
            &root_arg,
            "--trusted-keys",
            &trusted,
        ],
        &[],
    ));
    assert!(text.contains("valid (trusted key)"), "{text}");
}

/// The compile budget's flags are checked before anything is compiled, and the child's
/// verb stays out of the help.
#[test]
fn compile_budget_flags_are_checked() {
    let (dir, _root, guests) = node();
    let wasm = guests.join("nvidia-gpu.wasm").display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let small = run(
        &[
            "compile",
            "--cache-dir",
            &cache,
            "--compile-memory-mib",
            "16",
            &wasm,
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&small.stderr);
    assert!(
        !small.status.success() && stderr.contains("--compile-memory-mib must be at least"),
        "{stderr}"
    );
    let mut zero = Command::new(BIN);
    zero.args(["compile", "--cache-dir", &cache, &wasm])
        .env_remove("WDP_CONFIG")
        .env("WDP_COMPILE_TIMEOUT_SECONDS", "0");
    let zero = zero.output().expect("run the binary");
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(
        !zero.status.success() && stderr.contains("--compile-timeout-seconds must be at least"),
        "{stderr}"
    );
    let help = stdout(&run(&["--help"], &[]));
    assert!(!help.contains("compile-guest"), "{help}");
}

/// A typo in the config file (`guest-dir`) is an error naming the key and the flag it
/// probably meant, not a setting silently ignored.
#[test]
fn an_unknown_config_file_key_is_refused_by_name() {
    let (dir, root, guests) = node();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"host-root": {:?}, "guest-dir": {:?}}}"#,
            root.display().to_string(),
            guests.display().to_string()
        ),
    )
    .unwrap();
    let out = run(&["check", "--config", &config.display().to_string()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"unknown key "guest-dir""#) && stderr.contains(r#""guests-dir""#),
        "{stderr}"
    );
}

/// Arguments that are not UTF-8 (paths on Linux are bytes) get an error, never a panic.
#[test]
fn arguments_that_are_not_utf8_get_an_error_not_a_panic() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let bad = OsStr::from_bytes(b"/tmp/\xff\xfe");
    for args in [
        vec![OsStr::new("check"), OsStr::new("--guests-dir"), bad],
        vec![OsStr::new("check"), OsStr::new("--config"), bad],
        vec![OsStr::new("run"), OsStr::new("--metrics-addr"), bad],
        vec![OsStr::new("--log-format"), bad, OsStr::new("check")],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("WDP_CONFIG")
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{args:?}: no error message");
    }
}
