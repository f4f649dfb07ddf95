//! The vendor path of `docs/write-a-guest.md`, exactly as a newcomer follows it: copy the
//! template guest into a crate of their own, point it at this checkout, build it with
//! plain cargo for `wasm32-wasip2`, put it beside its policy, and ask
//! `wasm-device-plugin check` what it would advertise on a fixture node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::SimNode;
use testkit::kubelet::KubeletStandIn;
use wasm_device_plugin::node::HostConfig;
use wasm_device_plugin::node::Node;

const BIN: &str = env!("CARGO_BIN_EXE_wasm-device-plugin");

/// The guide's size profile for a guest crate of its own (step 2). It equals the guests
/// workspace's, so the build below reuses what testkit's build script compiled.
const RELEASE_PROFILE: &str = r#"
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#;

/// Largest guest that still fits a ConfigMap applied client-side (the annotation limit).
const MAX_GUEST_BYTES: u64 = 190 * 1024;

#[test]
fn a_guest_made_from_the_template_builds_and_advertises_its_widgets() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ lives in the checkout");
    let dir = tempfile::tempdir().expect("tempdir");

    // Step 1: copy the template as a new crate.
    let krate = dir.path().join("acme-widget");
    copy_sources(&checkout.join("guests/template"), &krate);

    // Step 2: name it, point it at the SDK and the WIT of the checkout, add the profile;
    // the checkout's lock file pins the versions the SDK was tested with.
    let manifest = krate.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("the template's Cargo.toml");
    let text = replace_once(&text, r#"name = "template""#, r#"name = "acme-widget""#);
    let text = replace_once(
        &text,
        r#"path = "../sdk""#,
        &format!(
            "path = {:?}",
            checkout.join("guests/sdk").display().to_string()
        ),
    );
    let text = replace_once(
        &text,
        r#"path = "../../wit""#,
        &format!("path = {:?}", checkout.join("wit").display().to_string()),
    );
    std::fs::write(&manifest, text + RELEASE_PROFILE).expect("write Cargo.toml");
    std::fs::copy(checkout.join("guests/Cargo.lock"), krate.join("Cargo.lock"))
        .expect("copy Cargo.lock");

    // Step 3: `cargo build --release --target wasm32-wasip2`. Offline (every crate is in
    // the local cache after testkit built the guests) and into the guests' target
    // directory, so that only the SDK and the new crate compile.
    let target_dir = Path::new(testkit::guests::TEMPLATE)
        .ancestors()
        .nth(3)
        .expect("testkit's guests live in <target>/wasm32-wasip2/release");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .current_dir(&krate)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    // What the outer `cargo test` set for the host must not reach the guest's build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    let built = build.output().expect("run cargo");
    assert!(
        built.status.success(),
        "building the copied template failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = target_dir.join("wasm32-wasip2/release/acme_widget.wasm");
    let size = std::fs::metadata(&wasm).expect("the built guest").len();
    assert!(
        size <= MAX_GUEST_BYTES,
        "{} is {size} bytes: over the 190 KiB a client-side applied ConfigMap holds",
        wasm.display()
    );

    // Step 4: the guests directory: `<name>.wasm` beside `<name>.policy.json`.
    let guests = dir.path().join("guests");
    std::fs::create_dir_all(&guests).expect("guests dir");
    std::fs::copy(&wasm, guests.join("acme-widget.wasm")).expect("copy the guest");
    std::fs::copy(
        krate.join("policy.json"),
        guests.join("acme-widget.policy.json"),
    )
    .expect("copy the policy");

    // Step 5: a fixture node with three widgets, one failed, one without NUMA affinity.
    let root = dir.path().join("root");
    let node = SimNode::empty(&root).expect("fixture");
    node.add_widgets("widget", &[("w0", Some(0)), ("w1", Some(1)), ("w2", None)])
        .expect("widgets");
    node.set_widget_health("widget", "w1", false)
        .expect("fail w1");

    // Step 6: `wasm-device-plugin check --host-root <fixture> --guests-dir <dir>`.
    let checked = Command::new(BIN)
        .arg("check")
        .arg("--host-root")
        .arg(&root)
        .arg("--guests-dir")
        .arg(&guests)
        .env_remove("WDP_GUESTS_DIR")
        .env_remove("WDP_HOST_ROOT")
        .env_remove("WDP_CONFIG")
        .output()
        .expect("run the binary");
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{checked:?}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "example.com/widget  (guest acme-widget; pre-start=false preferred-allocation=false)",
            "w0  Healthy  NUMA 0",
            "w1  Unhealthy  NUMA 1",
            "w2  Healthy  NUMA -",
        ],
        "{text}"
    );
}

/// The template as testkit built it, with its shipped policy, served to the kubelet
/// stand-in: its widgets are listed with health and NUMA nodes, and an allocation gets
/// each widget's node and the variable naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_serves_and_allocates_widgets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = SimNode::empty(&dir.path().join("root")).expect("fixture");
    node.add_widgets("widget", &[("w0", Some(0)), ("w1", Some(1)), ("w2", None)])
        .expect("widgets");
    node.set_widget_health("widget", "w2", false)
        .expect("fail w2");
    let guests = dir.path().join("guests");
    std::fs::create_dir_all(&guests).expect("guests dir");
    std::fs::write(guests.join("widget.wasm"), testkit::guests::TEMPLATE_WASM).expect("guest");
    std::fs::write(
        guests.join("widget.policy.json"),
        testkit::guests::TEMPLATE_POLICY,
    )
    .expect("policy");
    let plugins = dir.path().join("device-plugins");
    let kubelet = KubeletStandIn::start(&plugins).await.expect("kubelet");
    let mut config = HostConfig::new(node.root(), &guests, &plugins);
    // The fixture's device nodes are plain files (no root needed).
    config.device_nodes = wasm_device_plugin::handout::DeviceNodes::Simulated;
    let host = Node::start(config).await.expect("host starts");

    const WIDGET: &str = "example.com/widget";
    let view = kubelet
        .wait_for(WIDGET, Duration::from_secs(15), |v| v.capacity() == 3)
        .await
        .expect("three widgets listed");
    assert_eq!(view.allocatable(), 2, "w2 is unhealthy: {view:?}");
    let w0 = view.devices.iter().find(|d| d.id == "w0").expect("w0");
    let numa: Vec<i64> = w0
        .topology
        .iter()
        .flat_map(|t| t.nodes.iter().map(|n| n.id))
        .collect();
    assert_eq!(numa, [0]);

    let answer = kubelet
        .allocate(
            WIDGET,
            vec![vec!["w0".into(), "w1".into()], vec!["w1".into()]],
        )
        .await
        .expect("allocate");
    let first = &answer.container_responses[0];
    let nodes: Vec<&str> = first.devices.iter().map(|d| d.host_path.as_str()).collect();
    assert_eq!(nodes, ["/dev/widget/w0", "/dev/widget/w1"]);
    assert_eq!(
        first.envs.get("WIDGET_VISIBLE_DEVICES").map(String::as_str),
        Some("w0,w1")
    );
    assert_eq!(answer.container_responses[1].devices.len(), 1);

    // A widget whose node is gone is refused, not handed out without it.
    node.remove_dev_node("/dev/widget/w1").expect("remove node");
    let refused = kubelet
        .allocate(WIDGET, vec![vec!["w1".into()]])
        .await
        .expect_err("w1 has no node");
    assert!(refused.message().contains("/dev/widget/w1"), "{refused:?}");
    host.shutdown().await;
}

/// `from` with its sources, as `cp -r` would copy them, leaving out build output
/// (`target/`) and what `cargo component` generates (`src/bindings.rs`).
fn copy_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the crate dir");
    for entry in std::fs::read_dir(from).expect("read the template") {
        let entry = entry.expect("template entry");
        let name = entry.file_name();
        let path: PathBuf = entry.path();
        if name == "target" || path.ends_with("src/bindings.rs") {
            continue;
        }
        if path.is_dir() {
            copy_sources(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy a template file");
        }
    }
}

/// `text` with its one occurrence of `from` replaced: the guide's edits, which must
/// still apply to the template as it is.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the template's Cargo.toml no longer has exactly one `{from}`: update the guide"
    );
    text.replacen(from, to, 1)
}
