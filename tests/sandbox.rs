//! The sandbox, case by case: every way a guest can misbehave or be malformed, each
//! contained to that guest with the documented error or health change, while another
//! guest keeps serving; plus hot reload, the compiled-guest cache and signed guests.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use integration_tests::{Harness, TEST_POLICY, WAIT, add_widgets, widgets};
use kubelet_api::v1beta1 as pb;
use serde_json::json;
use tonic::Code;
use wasm_device_plugin::runtime::signature;

const BYSTANDER: &str = "example.com/bystander";

/// A harness whose `bystander` guest serves two devices next to whatever the test adds.
async fn with_bystander() -> Harness {
    let h = Harness::empty().await;
    add_widgets(&h.node, "bystander", &widgets(2));
    h.add_conformance(
        "bystander",
        json!({ "resources": [{ "name": BYSTANDER, "class": "bystander" }] }),
    );
    h
}

/// A conformance guest `name` serving `example.com/<name>` from class `<name>` (three
/// devices), with `extra` merged into its configuration.
fn add_faulty(h: &Harness, name: &str, extra: serde_json::Value) {
    add_widgets(&h.node, name, &widgets(3));
    let mut config =
        json!({ "resources": [{ "name": format!("example.com/{name}"), "class": name }] });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    h.add_conformance(name, config);
}

/// The bystander still lists and allocates.
async fn bystander_serves(h: &Harness) {
    h.kubelet
        .wait_for(BYSTANDER, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .expect("the bystander keeps serving");
    h.kubelet
        .allocate(BYSTANDER, vec![vec!["w0".into()]])
        .await
        .expect("the bystander allocates");
}

async fn allocate_err(h: &Harness, resource: &str) -> tonic::Status {
    tokio::time::timeout(WAIT, h.kubelet.allocate(resource, vec![vec!["w0".into()]]))
        .await
        .expect("Allocate returns")
        .expect_err("Allocate must fail")
}

fn assert_mentions(status: &tonic::Status, code: Code, fragments: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "{fragment:?} not in {:?}",
            status.message()
        );
    }
}

/// Panics and unbounded recursion trap the call, name the guest, and leave the
/// bystander untouched; the next call gets a fresh instance (and traps again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_stack_overflows_cost_one_call() {
    let mut h = with_bystander().await;
    add_faulty(&h, "panicky", json!({ "faults": { "allocate": "trap" } }));
    add_faulty(&h, "deep", json!({ "faults": { "allocate": "recurse" } }));
    h.start_host().await;
    for resource in ["example.com/panicky", "example.com/deep"] {
        h.kubelet
            .wait_for(resource, WAIT, |v| v.allocatable() == 3)
            .await
            .unwrap();
        for _ in 0..2 {
            let err = allocate_err(&h, resource).await;
            assert_mentions(&err, Code::Internal, &["trapped", "rebuilt"]);
        }
    }
    let deep = allocate_err(&h, "example.com/deep").await;
    assert!(deep.message().contains("guest deep"), "{deep:?}");
    bystander_serves(&h).await;
}

/// A guest that keeps faulting has its devices reported Unhealthy (still listed:
/// capacity holds, allocatable drops), and they come back after the cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_guest_turns_unhealthy_then_recovers() {
    let mut h = with_bystander().await;
    add_faulty(&h, "looping", json!({ "faults": { "allocate": "trap" } }));
    let mut config = h.config();
    config.limits.fault_cooldown = Duration::from_secs(2);
    h.start_host_with(config).await;
    let resource = "example.com/looping";
    h.kubelet
        .wait_for(resource, WAIT, |v| v.allocatable() == 3)
        .await
        .unwrap();
    for _ in 0..3 {
        allocate_err(&h, resource).await;
    }
    let view = h
        .kubelet
        .wait_for(resource, WAIT, |v| v.allocatable() == 0)
        .await
        .unwrap();
    assert_eq!(view.capacity(), 3, "devices stay listed");
    assert!(view.connected, "the stream stays open");
    let err = allocate_err(&h, resource).await;
    assert_mentions(&err, Code::InvalidArgument, &["unhealthy"]);
    h.kubelet
        .wait_for(resource, WAIT, |v| v.allocatable() == 3)
        .await
        .expect("recovers after the cool-down");
    bystander_serves(&h).await;
}

/// Answers too large or inconsistent are refused: a list over the device limit or
/// with duplicate IDs is not sent (an empty list stands), an answer over the 4 MiB a
/// call may copy out of a guest is stopped while it is copied, a preferred answer
/// naming IDs it was not offered is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_inconsistent_answers_are_refused() {
    let mut h = with_bystander().await;
    add_faulty(
        &h,
        "huge-list",
        json!({ "faults": { "listDevices": "huge" } }),
    );
    add_faulty(
        &h,
        "dup-list",
        json!({ "faults": { "listDevices": "duplicate-ids" } }),
    );
    add_faulty(
        &h,
        "huge-answer",
        json!({ "faults": { "allocate": "huge" } }),
    );
    add_widgets(&h.node, "liar", &widgets(3));
    h.add_conformance(
        "liar",
        json!({
            "resources": [{ "name": "example.com/liar", "class": "liar", "preferredAllocation": true }],
            "faults": { "preferredAllocation": "outside" },
        }),
    );
    h.start_host().await;
    for resource in ["example.com/huge-list", "example.com/dup-list"] {
        let view = h
            .kubelet
            .wait_for(resource, WAIT, |v| v.updates >= 1)
            .await
            .unwrap();
        assert!(
            view.devices.is_empty(),
            "{resource}: {} devices sent",
            view.devices.len()
        );
    }
    h.kubelet
        .wait_for("example.com/huge-answer", WAIT, |v| v.allocatable() == 3)
        .await
        .unwrap();
    let err = allocate_err(&h, "example.com/huge-answer").await;
    assert_mentions(
        &err,
        Code::Internal,
        &["guest huge-answer", "too much data"],
    );
    h.kubelet
        .wait_for("example.com/liar", WAIT, |v| v.allocatable() == 3)
        .await
        .unwrap();
    let ids: Vec<String> = ["w0", "w1"].map(String::from).to_vec();
    let answer = h
        .kubelet
        .preferred_allocation("example.com/liar", ids, vec![], 2)
        .await
        .unwrap();
    assert!(
        answer.container_responses[0].device_i_ds.is_empty(),
        "{answer:?}"
    );
    bystander_serves(&h).await;
}

/// Reads that try to leave the grant — by `..`, by an absolute path, by a symlink in
/// the node tree — are denied, and the denial names the guest and the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escapes_are_denied() {
    let mut h = with_bystander().await;
    let root = h.node.root().to_owned();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/shadow"), "root:secret").unwrap();
    std::fs::create_dir_all(root.join("sys/class/escape")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("sys/class/escape/abs")).unwrap();
    std::os::unix::fs::symlink("../../../etc", root.join("sys/class/escape/rel")).unwrap();
    let strict = |name: &str| {
        json!({ "read": ["/sys/class"], "devices": ["/dev/**"],
                "resourcePrefixes": [format!("example.com/{name}")] })
        .to_string()
    };
    for (name, probe) in [
        ("dotdot", "/sys/class/../../etc/shadow"),
        ("absolute", "/etc/shadow"),
        ("abslink", "/sys/class/escape/abs/shadow"),
        ("rellink", "/sys/class/escape/rel/shadow"),
    ] {
        add_widgets(&h.node, name, &widgets(1));
        let config = json!({
            "resources": [{ "name": format!("example.com/{name}"), "class": name }],
            "faults": { "allocate": "probe" },
            "probe": probe,
        });
        h.add_guest_with_policy(
            name,
            testkit::guests::CONFORMANCE_WASM,
            Some(&config.to_string()),
            Some(&strict(name)),
        );
    }
    h.start_host().await;
    for name in ["dotdot", "absolute", "abslink", "rellink"] {
        let resource = format!("example.com/{name}");
        h.kubelet
            .wait_for(&resource, WAIT, |v| v.allocatable() == 1)
            .await
            .unwrap();
        let err = allocate_err(&h, &resource).await;
        assert_mentions(
            &err,
            Code::Internal,
            &[&format!("guest {name}"), "denied", "/etc/shadow", "outside"],
        );
    }
    bystander_serves(&h).await;
}

/// An allocation handing out a device node outside the guest's grant is refused before
/// the kubelet sees it; a resource outside the granted prefixes is never registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_bound_devices_and_resource_names() {
    let mut h = with_bystander().await;
    h.node.add_dev_node("/dev/sda").unwrap();
    add_widgets(&h.node, "grabby", &widgets(1));
    let policy = r#"{"read": ["/sys/class"], "devices": ["/dev/grabby/*"], "env": ["*_IDS"], "annotations": ["example.com/*"], "resourcePrefixes": ["example.com/grabby"]}"#;
    let config = json!({
        "resources": [
            { "name": "example.com/grabby", "class": "grabby" },
            { "name": "other.org/grabby", "class": "grabby" },
        ],
        "faults": { "allocate": "foreign-device" },
    });
    h.add_guest_with_policy(
        "grabby",
        testkit::guests::CONFORMANCE_WASM,
        Some(&config.to_string()),
        Some(policy),
    );
    h.start_host().await;
    h.kubelet
        .wait_for("example.com/grabby", WAIT, |v| v.allocatable() == 1)
        .await
        .unwrap();
    let err = allocate_err(&h, "example.com/grabby").await;
    assert_mentions(
        &err,
        Code::Internal,
        &["/dev/sda", "outside the guest's device grant"],
    );
    assert!(
        h.kubelet
            .registrations()
            .iter()
            .all(|r| r.request.resource_name != "other.org/grabby")
    );
    let skipped = h.host().skipped();
    assert!(
        skipped
            .iter()
            .any(|s| s.reason.contains("other.org/grabby")
                && s.reason.contains("outside the prefixes")),
        "{skipped:#?}"
    );
    bystander_serves(&h).await;
}

/// Files that are not a guest for this host are skipped with a reason naming the
/// file: another world, a truncated component, no policy, and a guest with a broken
/// policy; the bystander serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_truncated_and_unpoliced_guests_are_skipped() {
    let mut h = with_bystander().await;
    h.add_guest("elsewhere", testkit::guests::WRONG_WORLD_WASM, None);
    let whole = testkit::guests::CONFORMANCE_WASM;
    h.add_guest("truncated", &whole[..whole.len() / 2], None);
    h.add_guest_with_policy("unpoliced", whole, None, None);
    h.add_guest_with_policy("misruled", whole, None, Some(r#"{"read": ["sys"]}"#));
    h.start_host().await;
    let skipped = h.host().skipped();
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|s| s.path.ends_with(format!("{name}.wasm")))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{name} not skipped: {skipped:#?}"))
    };
    assert!(reason("elsewhere").contains("does not match the wdp:device-plugin@0.1 contract"));
    assert!(reason("truncated").contains("does not compile"));
    assert!(reason("unpoliced").contains("no policy"));
    assert!(reason("misruled").contains("read"));
    bystander_serves(&h).await;
}

/// Guests swap while the kubelet allocates in a loop: no call fails or is lost, the
/// registration stays, a broken update leaves the old version serving, and removing
/// the guest deregisters its resource and removes its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_nothing() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(2));
    let resource = "example.com/widget";
    let config = json!({ "resources": [{ "name": resource, "class": "widget" }] }).to_string();
    let volume = ConfigMapVolume::new(&h.guests_dir);
    volume.publish(&[
        ("widgets.wasm", testkit::guests::CONFORMANCE_WASM),
        ("widgets.json", config.as_bytes()),
        ("widgets.policy.json", TEST_POLICY.as_bytes()),
    ]);
    h.start_host().await;
    h.kubelet
        .wait_for(resource, WAIT, |v| v.allocatable() == 2)
        .await
        .unwrap();
    let mut status = h.host().status();

    // The kubelet allocates in a loop while the guest is replaced twice.
    let calls = Arc::new(AtomicUsize::new(0));
    let kubelet = Arc::new(h.kubelet.client(resource).unwrap());
    let looping = {
        let (calls, kubelet) = (calls.clone(), kubelet.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..300 {
                let request = pb::AllocateRequest {
                    container_requests: vec![pb::ContainerAllocateRequest {
                        devices_ids: vec!["w1".into()],
                    }],
                };
                match kubelet.as_ref().clone().allocate(request).await {
                    Ok(answer) if answer.get_ref().container_responses.len() == 1 => {}
                    other => failures.push(format!("{other:?}")),
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };
    for version in 2..=3 {
        let config = json!({ "resources": [{ "name": resource, "class": "widget", "preferredAllocation": false }], "probe": format!("/v{version}") });
        volume.publish(&[
            ("widgets.wasm", testkit::guests::CONFORMANCE_WASM),
            ("widgets.json", config.to_string().as_bytes()),
            ("widgets.policy.json", TEST_POLICY.as_bytes()),
        ]);
        status
            .wait_for(|s| s.reloads_ok >= version - 1)
            .await
            .expect("the reload happens");
    }
    let failures = looping.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {:?}",
        failures.len(),
        calls.load(Ordering::Relaxed),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(
        h.kubelet.registrations().len(),
        1,
        "a reload keeps the registration"
    );

    // A broken update is refused and the previous version keeps answering.
    volume.publish(&[
        ("widgets.wasm", b"garbage"),
        ("widgets.json", config.as_bytes()),
        ("widgets.policy.json", TEST_POLICY.as_bytes()),
    ]);
    status.wait_for(|s| s.reloads_refused >= 1).await.unwrap();
    h.kubelet
        .allocate(resource, vec![vec!["w0".into()]])
        .await
        .expect("the old version serves");
    let skipped = h.host().skipped();
    assert!(
        skipped
            .iter()
            .any(|s| s.reason.contains("still serving the previous version")),
        "{skipped:#?}"
    );

    // Removing the guest deregisters its resource.
    volume.publish(&[]);
    let view = h
        .kubelet
        .wait_for(resource, WAIT, |v| !v.connected)
        .await
        .unwrap();
    assert_eq!(view.allocatable(), 0);
    status.wait_for(|s| s.resources.is_empty()).await.unwrap();
    assert!(h.plugin_sockets().is_empty(), "{:?}", h.plugin_sockets());
}

/// A restart with a warm cache loads the guest without compiling it; a corrupt entry
/// is rebuilt rather than loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cache_skips_compilation() {
    let mut h = with_bystander().await;
    let cache = h.tmp.path().join("cache");
    let mut config = h.config();
    config.cache_dir = Some(cache.clone());
    h.start_host_with(config.clone()).await;
    let stats = h.host().load_stats();
    assert_eq!(
        (
            stats.compiled.load(Ordering::Relaxed),
            stats.cache_hits.load(Ordering::Relaxed)
        ),
        (1, 0)
    );
    h.stop_host().await;

    h.start_host_with(config.clone()).await;
    let stats = h.host().load_stats();
    assert_eq!(
        (
            stats.compiled.load(Ordering::Relaxed),
            stats.cache_hits.load(Ordering::Relaxed)
        ),
        (0, 1)
    );
    bystander_serves(&h).await;
    h.stop_host().await;

    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&path, bytes).unwrap();
    }
    h.start_host_with(config).await;
    let stats = h.host().load_stats();
    assert_eq!(
        (
            stats.compiled.load(Ordering::Relaxed),
            stats.cache_hits.load(Ordering::Relaxed)
        ),
        (1, 0)
    );
    bystander_serves(&h).await;
}

/// With trusted keys configured, only guests with a valid signature over their exact
/// bytes load; unsigned, tampered and foreign-signed guests are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_guests_load_when_keys_are_trusted() {
    let mut h = Harness::empty().await;
    let (secret, public) = signature::generate().unwrap();
    let (stranger, _) = signature::generate().unwrap();
    let keys = h.tmp.path().join("trusted-keys");
    std::fs::write(&keys, format!("{public}\n")).unwrap();
    let wasm = testkit::guests::CONFORMANCE_WASM;
    add_widgets(&h.node, "widget", &widgets(1));
    let sign = |name: &str, key: &str, bytes: &[u8]| {
        let sig = signature::sign(key, bytes).unwrap();
        std::fs::write(
            signature::signature_path(&h.guests_dir.join(format!("{name}.wasm"))),
            sig,
        )
        .unwrap();
    };
    h.add_guest("signed", wasm, None);
    sign("signed", &secret, wasm);
    // The refused ones' policies claim no names, so they contest none of the signed one's.
    h.add_guest_with_policy("unsigned", wasm, None, Some("{}"));
    h.add_guest_with_policy("tampered", wasm, None, Some("{}"));
    let mut other = wasm.to_vec();
    other.extend_from_slice(b"\0");
    sign("tampered", &secret, &other);
    h.add_guest_with_policy("foreign", wasm, None, Some("{}"));
    sign("foreign", &stranger, wasm);
    let mut config = h.config();
    config.trusted_keys = Some(keys);
    h.start_host_with(config).await;
    h.kubelet
        .wait_for("example.com/widget", WAIT, |v| v.allocatable() == 1)
        .await
        .unwrap();
    let skipped = h.host().skipped();
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|s| s.reason.contains(&format!("{name}.wasm")))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{name} not skipped: {skipped:#?}"))
    };
    assert!(reason("unsigned").contains("unsigned"));
    assert!(reason("tampered").contains("does not verify"));
    assert!(reason("foreign").contains("does not verify"));
    assert_eq!(skipped.len(), 3, "{skipped:#?}");
}

/// A ConfigMap volume as the kubelet writes it: files in a timestamped directory,
/// `..data` pointing at it, and each key a link through `..data`; an update is a new
/// directory and an atomic rename of `..data`.
struct ConfigMapVolume {
    dir: std::path::PathBuf,
    version: std::cell::Cell<u32>,
}

impl ConfigMapVolume {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            version: std::cell::Cell::new(0),
        }
    }

    fn publish(&self, files: &[(&str, &[u8])]) {
        let version = self.version.get() + 1;
        self.version.set(version);
        let payload = format!("..2026_11_27_{version:04}");
        std::fs::create_dir(self.dir.join(&payload)).unwrap();
        for (name, bytes) in files {
            std::fs::write(self.dir.join(&payload).join(name), bytes).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&payload, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        // Keys: add links for new names, drop links for names that are gone.
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !files.iter().any(|(f, _)| *f == name) {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }
}
