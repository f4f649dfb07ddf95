//! What a guest hands out, attacked as a vendor who wants every GPU on the node would:
//! each hostile answer or CDI spec is refused before the kubelet (and so any runtime)
//! sees it, with a reason naming the guest and the field; nothing reaches the CDI
//! directory; a bystander guest keeps serving. Resource names have owners decided by
//! the policies, and guest text reaches the kubelet cleaned.
//!
//! Every attacker is granted what an InfiniBand guest would be: its own device nodes,
//! one host directory read-only, `*_IDS` variables, `example.com/` annotations and its
//! own CDI kind. The node also holds a GPU (`/dev/nvidia0`), a disk (`/dev/sda`) and
//! links planted to reach them.

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use serde_json::json;
use tonic::Code;

const BYSTANDER: &str = "example.com/bystander";

/// The InfiniBand-like grant of attacker `class`.
fn attacker_policy(class: &str) -> String {
    json!({
        "read": ["/sys/class", "/sys/devices", format!("/dev/{class}")],
        "devices": [format!("/dev/{class}/*")],
        "mounts": [format!("/opt/{class}"), { "hostPath": "/dev/null", "containerPath": "/var/**" }],
        "env": ["*_IDS"],
        "annotations": ["example.com/*"],
        "resourcePrefixes": [format!("example.com/{class}")],
        "cdiKinds": [format!("example.com/{class}")],
    })
    .to_string()
}

/// A node with a GPU, a disk, `/etc`, and a bystander guest serving two devices.
async fn node_with_bystander() -> Harness {
    let h = Harness::empty().await;
    add_widgets(&h.node, "bystander", &widgets(2));
    h.add_conformance(
        "bystander",
        json!({ "resources": [{ "name": BYSTANDER, "class": "bystander" }] }),
    );
    h.node.add_dev_node("/dev/nvidia0").unwrap();
    h.node.add_dev_node("/dev/sda").unwrap();
    let root = h.node.root();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/shadow"), "root:secret").unwrap();
    std::fs::create_dir_all(root.join("dev/null").parent().unwrap()).unwrap();
    std::fs::write(root.join("dev/null"), "").unwrap();
    h
}

/// Attacker `class` with one widget, `/opt/<class>` (with `evil -> /etc`) and
/// `/dev/<class>/evil -> ../nvidia0`, configured with `extra`.
fn add_attacker(h: &Harness, class: &str, extra: serde_json::Value) {
    add_widgets(&h.node, class, &widgets(1));
    let root = h.node.root();
    std::fs::create_dir_all(root.join(format!("opt/{class}"))).unwrap();
    std::os::unix::fs::symlink("/etc", root.join(format!("opt/{class}/evil"))).unwrap();
    std::os::unix::fs::symlink("../nvidia0", root.join(format!("dev/{class}/evil"))).unwrap();
    let mut config =
        json!({ "resources": [{ "name": format!("example.com/{class}"), "class": class }] });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    h.add_guest_with_policy(
        class,
        testkit::guests::CONFORMANCE_WASM,
        Some(&config.to_string()),
        Some(&attacker_policy(class)),
    );
}

async fn allocate_err(h: &Harness, resource: &str) -> tonic::Status {
    h.kubelet
        .wait_for(resource, WAIT, |v| v.allocatable() == 1)
        .await
        .unwrap_or_else(|e| panic!("{resource} serves: {e:?}"));
    tokio::time::timeout(WAIT, h.kubelet.allocate(resource, vec![vec!["w0".into()]]))
        .await
        .expect("Allocate returns")
        .expect_err("the hostile answer must be refused")
}

async fn bystander_serves(h: &Harness) {
    h.kubelet
        .wait_for(BYSTANDER, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .expect("the bystander keeps serving");
    let answer = h
        .kubelet
        .allocate(BYSTANDER, vec![vec!["w0".into()]])
        .await
        .expect("the bystander allocates");
    assert_eq!(
        answer.container_responses[0].envs["BYSTANDER_IDS"], "w0",
        "{answer:?}"
    );
}

fn assert_refused(class: &str, status: &tonic::Status, fragments: &[&str]) {
    assert_eq!(status.code(), Code::Internal, "{class}: {status:?}");
    for fragment in [&format!("guest {class}") as &str].iter().chain(fragments) {
        assert!(
            status.message().contains(fragment),
            "{class}: {fragment:?} not in {:?}",
            status.message()
        );
    }
}

/// Answers that try to reach a GPU, a disk, the host's files, a runtime's control
/// paths or another vendor's CDI devices are refused field by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_refused_with_the_field() {
    let mut h = node_with_bystander().await;
    let attacks: &[(&str, &[&str])] = &[
        (
            "gpu-env",
            &["env \"NVIDIA_VISIBLE_DEVICES\"", "exactly this name"],
        ),
        ("ld-preload", &["env \"LD_PRELOAD\"", "dynamic linker"]),
        (
            "cdi-annotation",
            &["annotation \"cdi.k8s.io/widget\"", "interpret"],
        ),
        (
            "crio-annotation",
            &["annotation \"io.kubernetes.cri-o.Devices\"", "interpret"],
        ),
        (
            "ungranted-annotation",
            &["annotation \"other.com/x\"", "not granted"],
        ),
        (
            "foreign-cdi-name",
            &["CDI device \"nvidia.com/gpu=all\"", "cdiKinds"],
        ),
        (
            "unwritten-cdi-name",
            &[
                "example.com/unwritten-cdi-name=w99",
                "no spec this guest wrote",
            ],
        ),
        (
            "etc-mount",
            &["mount \"/etc\"", "outside the guest's mount grant"],
        ),
        (
            "writable-mount",
            &[
                "mount \"/opt/writable-mount\"",
                "writable mount not granted",
            ],
        ),
        (
            "link-mount",
            &["/opt/link-mount/evil", "resolves to /etc", "outside"],
        ),
        (
            "control-path-mount",
            &["nvidia-container-devices", "runtime hook"],
        ),
        ("root-mount", &["mount \"/\"", "no mount may cover"]),
        (
            "gpu-device",
            &[
                "device \"/dev/nvidia0\"",
                "outside the guest's device grant",
            ],
        ),
        (
            "link-device",
            &["/dev/link-device/evil", "/dev/nvidia0", "outside"],
        ),
    ];
    for (attack, _) in attacks {
        add_attacker(&h, attack, json!({ "attack": attack }));
    }
    h.start_host().await;
    for (attack, fragments) in attacks {
        let err = allocate_err(&h, &format!("example.com/{attack}")).await;
        assert_refused(attack, &err, fragments);
    }
    let metrics = wasm_device_plugin::metrics::metrics().encode();
    assert!(
        metrics.contains(r#"wdp_handouts_refused_total{guest="gpu-env"} 1"#),
        "each refusal is counted for the operator: {metrics}"
    );
    bystander_serves(&h).await;
}

/// CDI specs that carry hooks, host interfaces, host groups, host files, a GPU (named
/// or through a link), false device numbers, another vendor's kind, a linker variable
/// or an unknown field are refused, and nothing is written to the CDI directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cdi_specs_are_refused_and_never_written() {
    let mut h = node_with_bystander().await;
    let attacks: &[(&str, &[&str])] = &[
        ("hooks", &["hooks run programs on the host"]),
        ("net-devices", &["netDevices move host network interfaces"]),
        ("additional-gids", &["additionalGids"]),
        (
            "etc-mount",
            &["mount \"/etc\"", "outside the guest's mount grant"],
        ),
        (
            "gpu-node",
            &[
                "device \"/dev/nvidia0\"",
                "outside the guest's device grant",
            ],
        ),
        ("link-node", &["/dev/cdi-link-node/evil", "/dev/nvidia0"]),
        ("wrong-numbers", &["type \"b\" but the node is"]),
        ("foreign-kind", &["nvidia.com/gpu", "cdiKinds"]),
        ("ld-preload-env", &["LD_PRELOAD"]),
        ("unknown-field", &["createRuntime"]),
    ];
    for (attack, _) in attacks {
        add_attacker(&h, &format!("cdi-{attack}"), json!({ "cdiAttack": attack }));
    }
    h.start_host().await;
    for (attack, fragments) in attacks {
        let class = format!("cdi-{attack}");
        let err = allocate_err(&h, &format!("example.com/{class}")).await;
        assert_refused(&class, &err, fragments);
        assert!(err.message().contains("denied"), "{class}: {err:?}");
    }
    let cdi_dir = h.node.path("/var/run/cdi");
    let written: Vec<_> = std::fs::read_dir(&cdi_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        written.is_empty(),
        "nothing reached the CDI directory: {written:?}"
    );
    bystander_serves(&h).await;
}

/// A name belongs to the policy that grants it most specifically, whatever the load
/// order; two policies granting it alike both lose it, and both are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_names_belong_to_the_policies_not_the_load_order() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "gpu", &widgets(2));
    let guest = |h: &Harness, name: &str, prefixes: serde_json::Value, resource: &str| {
        let policy = json!({
            "read": ["/sys/class", "/dev"], "devices": ["/dev/gpu/*"], "env": ["*_IDS"],
            "annotations": ["example.com/*"], "resourcePrefixes": prefixes,
        });
        h.add_guest_with_policy(
            name,
            testkit::guests::CONFORMANCE_WASM,
            Some(&json!({ "resources": [{ "name": resource, "class": "gpu" }] }).to_string()),
            Some(&policy.to_string()),
        );
    };
    // `aaa-intruder` loads first (guests load in name order) and asks for the owner's name.
    guest(
        &h,
        "aaa-intruder",
        json!(["example.com/"]),
        "example.com/gpu",
    );
    guest(&h, "owner", json!(["example.com/gpu"]), "example.com/gpu");
    guest(&h, "twin-a", json!(["example.org/"]), "example.org/gpu");
    guest(&h, "twin-b", json!(["example.org/"]), "example.org/gpu");
    h.start_host().await;
    h.kubelet
        .wait_for("example.com/gpu", WAIT, |v| v.allocatable() == 2)
        .await
        .expect("the owner serves its name");
    let registrations = h.kubelet.registrations();
    let example_com: Vec<_> = registrations
        .iter()
        .filter(|r| r.request.resource_name == "example.com/gpu")
        .collect();
    assert_eq!(example_com.len(), 1, "registered once: {registrations:#?}");
    assert!(
        registrations
            .iter()
            .all(|r| r.request.resource_name != "example.org/gpu"),
        "a contested name is served by nobody"
    );
    let skipped = h.host().skipped();
    let reason_of = |guest: &str| {
        skipped
            .iter()
            .find(|s| s.path.ends_with(format!("{guest}.wasm")))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{guest} is reported: {skipped:#?}"))
    };
    assert!(reason_of("aaa-intruder").contains("it is owner's"));
    for twin in ["twin-a", "twin-b"] {
        let reason = reason_of(twin);
        assert!(
            reason.contains("twin-a, twin-b") && reason.contains("none of them serves it"),
            "{reason}"
        );
    }
    let answer = h
        .kubelet
        .allocate("example.com/gpu", vec![vec!["w0".into()]])
        .await
        .expect("allocates");
    assert_eq!(answer.container_responses[0].envs["GPU_IDS"], "w0");
}

/// Each resource costs a socket, a registration and a Node status field: a guest
/// advertising 17 gets 16, and the 17th is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_per_guest_are_capped() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "many", &widgets(1));
    let resources: Vec<_> = (0..17)
        .map(|i| json!({ "name": format!("example.com/many-{i:02}"), "class": "many" }))
        .collect();
    h.add_conformance("many", json!({ "resources": resources }));
    h.start_host().await;
    h.kubelet
        .wait_for("example.com/many-15", WAIT, |v| v.allocatable() == 1)
        .await
        .expect("the first 16 serve");
    assert_eq!(h.host().resources().len(), 16);
    let skipped = h.host().skipped();
    assert!(
        skipped
            .iter()
            .any(|s| s.reason.contains("example.com/many-16") && s.reason.contains("at most 16")),
        "{skipped:#?}"
    );
}

/// A guest's error text is data: newlines, terminal escapes and bidirectional overrides
/// never reach the kubelet (which shows them as pod events), and 10 KiB is cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_text_reaches_the_kubelet_cleaned_and_bounded() {
    let mut h = node_with_bystander().await;
    add_attacker(&h, "forged-text", json!({ "attack": "forged-text" }));
    h.start_host().await;
    let err = allocate_err(&h, "example.com/forged-text").await;
    let message = err.message();
    assert!(message.contains("fake log line"), "{message:?}");
    assert!(
        !message.contains(['\n', '\r', '\u{1b}', '\u{202e}']),
        "{message:?}"
    );
    assert!(message.len() < 4 * 1024, "{} bytes", message.len());
    bystander_serves(&h).await;
}

/// A guest that proposes node labels it was not granted, in Kubernetes' namespaces, or
/// built to inject lines into the NFD feature file: only the granted, valid label is
/// written, and a guest granted no prefix writes nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_node_labels_never_reach_the_feature_file() {
    let mut h = node_with_bystander().await;
    let hostile = json!([
        ["example.com/labels.count", "3"],
        ["example.com/labels.product", "x\npwned=true"],
        [
            "example.com/labels.vendor",
            "x\nfeature.node.kubernetes.io/pwned=true"
        ],
        ["example.com/labels.model\nnvidia.com/gpu.product", "A100"],
        ["node-role.kubernetes.io/control-plane", ""],
        ["feature.node.kubernetes.io/pwned", "true"],
        ["other.example/labels.count", "1"],
        ["# +expiry-time", "2000-01-01T00:00:00Z"],
        ["example.com/labels.long", "x".repeat(64)],
        ["example.com/labels.count", "4"],
    ]);
    add_attacker(&h, "labels", json!({ "labels": hostile }));
    // The same labels from a guest whose policy grants no label prefix.
    add_attacker(&h, "nolabels", json!({ "labels": hostile }));
    let mut policy: serde_json::Value =
        serde_json::from_str(&attacker_policy("labels")).expect("policy");
    policy["labelPrefixes"] = json!(["example.com/labels."]);
    std::fs::write(h.guests_dir.join("labels.policy.json"), policy.to_string()).unwrap();
    h.start_host().await;
    h.kubelet
        .wait_for("example.com/labels", WAIT, |v| v.allocatable() == 1)
        .await
        .expect("attacker serves");
    let dir = h
        .node
        .root()
        .join("etc/kubernetes/node-feature-discovery/features.d");
    let file = dir.join("wdp-labels");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !file.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no feature file");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, vec!["example.com/labels.count=3"], "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with('#')).count(),
        1,
        "{text}"
    );
    assert!(
        !dir.join("wdp-nolabels").exists(),
        "nothing granted, nothing written"
    );
    bystander_serves(&h).await;
    h.stop_host().await;
}
