//! Release detection: when the kubelet's pod-resources API stops listing device IDs (the
//! pod ended), the host calls the guest's optional `lifecycle.release` export within one
//! poll interval, so the vendor can reset the devices before the next tenant.

use std::time::Duration;

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use serde_json::json;
use testkit::pod_resources::{Assignment, PodResourcesStandIn};
use wasm_device_plugin::kubelet::pod_resources::PodResourcesConfig;

const WIDGET: &str = "example.com/widget";
const POLL: Duration = Duration::from_millis(200);

/// A policy that also lets the conformance guest write each widget's `released` file.
const POLICY: &str = r#"{
    "read": ["/sys", "/dev"],
    "devices": ["/dev/**"],
    "resourcePrefixes": ["example.com/"],
    "write": ["/sys/class/widget/*/released"]
}"#;

fn released(h: &Harness, id: &str) -> String {
    std::fs::read_to_string(h.node.path(&format!("/sys/class/widget/{id}/released")))
        .unwrap_or_default()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// IDs that leave the pod-resources list are released to the guest, within a poll
/// interval; IDs still assigned elsewhere, and an unreachable API, release nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_devices_reach_the_guest_within_one_poll() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(3));
    for id in ["w0", "w1", "w2"] {
        std::fs::write(h.node.path(&format!("/sys/class/widget/{id}/released")), "").unwrap();
    }
    let config = json!({ "resources": [{ "name": WIDGET, "class": "widget" }] }).to_string();
    h.add_guest_with_policy(
        "widgets",
        testkit::guests::CONFORMANCE_WASM,
        Some(&config),
        Some(POLICY),
    );
    let pod_resources =
        PodResourcesStandIn::start(&h.tmp.path().join("pod-resources/kubelet.sock")).unwrap();
    let assign = |pod: &str, ids: &[&str]| Assignment {
        pod: pod.into(),
        container: "main".into(),
        resource: WIDGET.into(),
        device_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    pod_resources.set(vec![assign("a", &["w0", "w1"]), assign("b", &["w2"])]);
    let mut host_config = h.config();
    host_config.pod_resources = Some(PodResourcesConfig {
        socket: pod_resources.socket().to_owned(),
        interval: POLL,
    });
    h.start_host_with(host_config).await;
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.allocatable() == 3)
        .await
        .unwrap();
    eventually("the host has read the assignments", || {
        pod_resources.lists() >= 2
    })
    .await;

    // Pod a ends: w0 and w1 are released; w2 (pod b) is not.
    pod_resources.set(vec![assign("b", &["w2"])]);
    let changed = tokio::time::Instant::now();
    eventually("w0 and w1 are released", || {
        released(&h, "w0") == "1" && released(&h, "w1") == "1"
    })
    .await;
    let took = changed.elapsed();
    assert!(
        took < POLL * 2 + Duration::from_millis(1500),
        "released after {took:?} with a {POLL:?} poll"
    );
    assert_eq!(released(&h, "w2"), "", "w2 is still assigned");

    // The API going away is not a release of everything.
    drop(pod_resources);
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(
        released(&h, "w2"),
        "",
        "an unreachable API releases nothing"
    );
}
