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
    let (h, pod_resources) = serving_with_pod_resources().await;
    let seen = pod_resources.lists();
    pod_resources.set(vec![assign("a", &["w0", "w1"]), assign("b", &["w2"])]);
    eventually("the host has read the assignments", || {
        pod_resources.lists() >= seen + 2
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

/// The host serving three widgets with release detection on a fast poll.
async fn serving_with_pod_resources() -> (Harness, PodResourcesStandIn) {
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
    (h, pod_resources)
}

fn assign(pod: &str, ids: &[&str]) -> Assignment {
    Assignment {
        pod: pod.into(),
        container: "main".into(),
        resource: WIDGET.into(),
        device_ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

/// A device freed and handed to a new pod between two polls never looks unassigned,
/// yet the old pod's hold ended: the guest is still told (assignments are compared as
/// pod, container and device, not as bare IDs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reassigned_within_one_poll_is_still_released() {
    let (h, pod_resources) = serving_with_pod_resources().await;
    pod_resources.set(vec![assign("a", &["w0"]), assign("b", &["w2"])]);
    let seen = pod_resources.lists();
    eventually("the host has read pod a's hold", || {
        pod_resources.lists() >= seen + 2
    })
    .await;
    // Pod a ends and pod c gets w0 within one poll.
    pod_resources.set(vec![assign("c", &["w0"]), assign("b", &["w2"])]);
    eventually("w0 is released", || released(&h, "w0") == "1").await;
    assert_eq!(released(&h, "w2"), "", "w2 is still held by pod b");
    assert_eq!(released(&h, "w1"), "", "w1 was never held");
}

/// A release the guest fails (here: the attribute it writes is missing) is tried again
/// at the next polls, and lands once the guest can do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_is_tried_again() {
    let (h, pod_resources) = serving_with_pod_resources().await;
    let attribute = h.node.path("/sys/class/widget/w1/released");
    std::fs::remove_file(&attribute).unwrap();
    pod_resources.set(vec![assign("a", &["w1"])]);
    let seen = pod_resources.lists();
    eventually("the host has read pod a's hold", || {
        pod_resources.lists() >= seen + 2
    })
    .await;
    pod_resources.set(vec![]);
    // At least two polls with the release failing.
    let seen = pod_resources.lists();
    eventually("two more polls", || pod_resources.lists() >= seen + 3).await;
    assert!(!attribute.exists(), "nothing could have been written");
    std::fs::write(&attribute, "").unwrap();
    eventually("the retried release lands", || released(&h, "w1") == "1").await;
}
