//! Guests are independent: each loads, reloads and rescans on its own task, so a guest
//! that uses its whole enumerate deadline on every rescan delays only itself — another
//! guest's health change reaches the kubelet within that guest's own rescan interval
//! plus a small margin, its allocations keep answering, and a new guest registers
//! meanwhile. A failed load is tried again with back-off, so a transient failure at boot
//! does not leave a guest off until someone edits the ConfigMap.

use std::time::{Duration, Instant};

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use serde_json::json;
use wasm_device_plugin::policy::limits::CallDeadlines;

const BYSTANDER: &str = "example.com/bystander";
/// The harness's rescan interval is 100 ms; a health change may take one interval, one
/// enumeration and the stream's delivery. A slow guest's enumeration takes 2 s.
const MARGIN: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_guest_delays_only_itself() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "bystander", &widgets(2));
    h.add_conformance(
        "bystander",
        json!({ "resources": [{ "name": BYSTANDER, "class": "bystander" }] }),
    );
    add_widgets(&h.node, "slow", &widgets(2));
    h.add_conformance(
        "slow",
        json!({ "resources": [{ "name": "example.com/slow", "class": "slow" }],
                "faults": { "listDevices": "loop" } }),
    );
    h.deadlines = CallDeadlines {
        enumerate: Duration::from_secs(2),
        ..CallDeadlines::default()
    };
    let config = h.config();
    h.start_host_with(config).await;
    h.kubelet
        .wait_for(BYSTANDER, WAIT, |v| v.allocatable() == 2)
        .await
        .expect("the bystander serves");

    for (round, id) in ["w0", "w1"].into_iter().enumerate() {
        let changed = Instant::now();
        h.node.set_widget_health("bystander", id, false).unwrap();
        h.kubelet
            .wait_for(BYSTANDER, WAIT, |v| v.allocatable() == 1 - round)
            .await
            .expect("the health change arrives");
        let took = changed.elapsed();
        eprintln!("round {round}: the bystander's health change reached the kubelet in {took:?}");
        assert!(
            took < MARGIN,
            "round {round}: the bystander's health change took {took:?} while the slow guest enumerates for 2 s"
        );
    }
    h.node.set_widget_health("bystander", "w0", true).unwrap();
    h.kubelet
        .wait_for(BYSTANDER, WAIT, |v| v.allocatable() == 1)
        .await
        .unwrap();
    let started = Instant::now();
    h.kubelet
        .allocate(BYSTANDER, vec![vec!["w0".into()]])
        .await
        .expect("the bystander allocates");
    assert!(started.elapsed() < MARGIN, "{:?}", started.elapsed());

    // A guest added now registers without waiting for the slow one's rescans.
    add_widgets(&h.node, "newcomer", &widgets(1));
    let added = Instant::now();
    h.add_conformance(
        "newcomer",
        json!({ "resources": [{ "name": "example.com/newcomer", "class": "newcomer" }] }),
    );
    h.kubelet
        .wait_for("example.com/newcomer", WAIT, |v| v.allocatable() == 1)
        .await
        .expect("the newcomer registers");
    assert!(
        added.elapsed() < Duration::from_secs(2) + MARGIN,
        "the newcomer took {:?}",
        added.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_tried_again_with_back_off() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "late", &widgets(2));
    h.add_conformance(
        "late",
        json!({ "resources": [{ "name": "example.com/late", "class": "late" }],
                "requireFile": "/sys/class/late/ready" }),
    );
    h.start_host().await;
    let skipped = h.host().skipped();
    assert!(
        skipped
            .iter()
            .any(|s| s.reason.contains("waiting for /sys/class/late/ready")
                && s.reason.contains("tried 1 time, next try in 1 s")),
        "{skipped:#?}"
    );
    // The driver's attribute appears; nobody touches the guests directory.
    std::fs::write(h.node.path("/sys/class/late/ready"), "1\n").unwrap();
    h.kubelet
        .wait_for("example.com/late", WAIT, |v| v.allocatable() == 2)
        .await
        .expect("a later try loads the guest");
    let mut status = h.host().status();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.skipped.is_empty()))
        .await
        .expect("the refusal is cleared")
        .expect("status");
    let metrics = wasm_device_plugin::metrics::metrics().encode();
    assert!(
        metrics.contains(r#"wdp_guest_load_failures{guest="late"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"wdp_guest_load_retries_total{guest="late"}"#)),
        "{metrics}"
    );
}

/// A call whose caller has given up is never started: a pre-start the kubelet stopped
/// waiting for (here queued behind a call stuck in a host function) must not reset a
/// device later, when the stuck call finally returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_caller_gave_up_is_never_started() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "late", &widgets(1));
    let marker = h.node.path("/sys/class/late/w0/prestarted");
    std::fs::write(&marker, "").unwrap();
    let config = json!({
        "resources": [{ "name": "example.com/late", "class": "late", "preStartRequired": true }],
        "faults": { "allocate": "sleep" },
        "sleepMs": 3500,
        "markPreStart": true,
    });
    let mut policy = integration_tests::conformance_policy(&config);
    policy["write"] = json!(["/sys/class/late/*/prestarted"]);
    h.add_guest_with_policy(
        "late",
        testkit::guests::CONFORMANCE_WASM,
        Some(&config.to_string()),
        Some(&policy.to_string()),
    );
    h.deadlines = CallDeadlines::all(Duration::from_millis(300));
    let config = h.config();
    h.start_host_with(config).await;
    h.kubelet
        .wait_for("example.com/late", WAIT, |v| v.allocatable() == 1)
        .await
        .expect("serves");

    // The guest's thread sleeps in a host call for 3.5 s; a pre-start queues behind it
    // and its caller gives up after 200 ms, long before the sleep ends.
    let started = Instant::now();
    let mut client = h.kubelet.client("example.com/late").expect("a client");
    let stuck = tokio::spawn(async move {
        let request = kubelet_api::v1beta1::AllocateRequest {
            container_requests: vec![kubelet_api::v1beta1::ContainerAllocateRequest {
                devices_ids: vec!["w0".into()],
            }],
        };
        client.allocate(request).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        h.kubelet.pre_start("example.com/late", vec!["w0".into()]),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the pre-start waited behind the stuck call"
    );
    let _ = stuck.await;
    // Well past the moment the sleep ended and the old thread took its next job.
    let settled = Duration::from_millis(3500 + 1500);
    tokio::time::sleep(settled.saturating_sub(started.elapsed())).await;
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "",
        "the abandoned pre-start never ran"
    );
    // A pre-start someone waits for runs (on the fresh thread).
    h.kubelet
        .pre_start("example.com/late", vec!["w0".into()])
        .await
        .expect("pre-start");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "1");
}
