//! The operator's endpoints: `/metrics` reflects what the host does, `/healthz` answers,
//! `/readyz` says ready only while every guest is loaded and the kubelet has accepted
//! every resource. (Metrics are process-wide: each test here has its own resource and
//! guest names.)

use integration_tests::ops::{self, get};
use integration_tests::{Harness, WAIT, add_widgets, widgets};
use serde_json::json;

const WIDGET: &str = "example.com/widget";

async fn eventually_get(addr: std::net::SocketAddr, path: &str, code: u16) -> String {
    ops::eventually(addr, path, code, |_| true).await
}

/// Metrics count devices, registrations, allocations, guest calls and reloads; readiness
/// follows the guests directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_tell_the_operator_the_truth() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(3));
    h.add_conformance(
        "widgets",
        json!({ "resources": [{ "name": WIDGET, "class": "widget" }] }),
    );
    let mut config = h.config();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    h.start_host_with(config).await;
    let addr = h.host().ops_addr().expect("ops endpoint bound");
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.allocatable() == 3)
        .await
        .unwrap();

    assert_eq!(get(addr, "/healthz").await.0, 200);
    eventually_get(addr, "/readyz", 200).await;

    h.node.set_widget_health("widget", "w1", false).unwrap();
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.allocatable() == 2)
        .await
        .unwrap();
    h.kubelet
        .allocate(WIDGET, vec![vec!["w0".into()]])
        .await
        .unwrap();
    h.kubelet
        .allocate(WIDGET, vec![vec!["nope".into()]])
        .await
        .unwrap_err();
    let (code, metrics) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        r#"wdp_devices{resource="example.com/widget",health="Healthy"} 2"#,
        r#"wdp_devices{resource="example.com/widget",health="Unhealthy"} 1"#,
        r#"wdp_registrations_total{resource="example.com/widget",result="ok"} 1"#,
        r#"wdp_allocations_total{resource="example.com/widget",result="ok"} 1"#,
        r#"wdp_allocations_total{resource="example.com/widget",result="error"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    for family in [
        r#"wdp_guest_call_duration_seconds_count{guest="widgets",call="allocate"}"#,
        r#"wdp_rpc_duration_seconds_count{method="Allocate"} 2"#,
    ] {
        assert!(metrics.contains(family), "{family} not in\n{metrics}");
    }

    // A broken guest in the directory: still healthy, no longer ready, and says why.
    h.add_guest("broken", b"not wasm", None);
    // The host may first see the policy file half-written (and say so); the reason it
    // settles on names the `.wasm`.
    let why = ops::eventually(addr, "/readyz", 503, |body| {
        body.contains("not a WebAssembly binary")
    })
    .await;
    assert!(why.contains("broken.wasm"), "{why}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    std::fs::remove_file(h.guests_dir.join("broken.wasm")).unwrap();
    eventually_get(addr, "/readyz", 200).await;
}

/// Direct registration: `/readyz` is 503 while the kubelet refuses `Register`, and
/// while it has answered `Register` but opened no `ListAndWatch` stream; 200 only after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_register_and_list_and_watch() {
    const GADGET: &str = "example.com/gadget";
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(2));
    h.add_conformance(
        "gadgets",
        json!({ "resources": [{ "name": GADGET, "class": "widget" }] }),
    );
    h.kubelet.refuse_next_registrations(usize::MAX);
    h.kubelet.hold_list_and_watch(true);
    let mut config = h.config();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    h.start_host_with(config).await;
    let addr = h.host().ops_addr().expect("ops endpoint bound");

    let why = ops::eventually(addr, "/readyz", 503, |b| b.contains("refused by the test")).await;
    assert!(why.contains(GADGET), "{why}");

    h.kubelet.refuse_next_registrations(0);
    let why = ops::eventually(addr, "/readyz", 503, |b| b.contains("ListAndWatch")).await;
    assert!(why.contains("registered") && why.contains(GADGET), "{why}");
    assert!(!h.host().readiness().is_accepted(GADGET));

    h.kubelet.hold_list_and_watch(false);
    ops::eventually(addr, "/readyz", 200, |b| b.contains("ready")).await;
    assert!(h.host().readiness().is_accepted(GADGET));
}

/// A guest that leaves the directory takes its series with it: per-resource and
/// per-guest series disappear from `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_guests_series_are_deleted() {
    const SPROCKET: &str = "example.com/sprocket";
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(2));
    h.add_conformance(
        "sprockets",
        json!({ "resources": [{ "name": SPROCKET, "class": "widget" }] }),
    );
    let mut config = h.config();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    h.start_host_with(config).await;
    let addr = h.host().ops_addr().expect("ops endpoint bound");
    h.kubelet
        .wait_for(SPROCKET, WAIT, |v| v.allocatable() == 2)
        .await
        .unwrap();
    // (No Allocate here: `wdp_rpc_duration_seconds{method}` is process-wide and the first
    // test counts its own.)
    let metrics = ops::eventually(addr, "/metrics", 200, |m| {
        m.contains(r#"wdp_kubelet_accepted{resource="example.com/sprocket"} 1"#)
    })
    .await;
    for series in [
        r#"wdp_devices{resource="example.com/sprocket",health="Healthy"} 2"#,
        r#"wdp_registrations_total{resource="example.com/sprocket",result="ok"}"#,
        r#"wdp_guest_call_duration_seconds_count{guest="sprockets",call="resources"}"#,
        r#"wdp_guest_load_failures{guest="sprockets"} 0"#,
    ] {
        assert!(metrics.contains(series), "{series} not in\n{metrics}");
    }

    for file in ["sprockets.wasm", "sprockets.policy.json", "sprockets.json"] {
        let _ = std::fs::remove_file(h.guests_dir.join(file));
    }
    let metrics = ops::eventually(addr, "/metrics", 200, |m| {
        !m.contains("example.com/sprocket") && !m.contains(r#"guest="sprockets""#)
    })
    .await;
    assert!(!metrics.contains("sprocket"), "{metrics}");
}

/// A client that connects and never finishes its request head is cut off (it would
/// otherwise hold a connection forever), and a flood of such clients, more than the
/// server serves at once, delays a probe but never starves it. (No guests: this test
/// touches no metric the others read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_cannot_starve_the_probes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::empty().await;
    let mut config = h.config();
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    h.start_host_with(config).await;
    let addr = h.host().ops_addr().expect("ops endpoint bound");

    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .expect("half a request");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the server kept a half-sent request open: {closed:?}"
    );

    let max = wasm_device_plugin::node::ops::MAX_CONNECTIONS;
    let mut flood = Vec::new();
    for _ in 0..max + 8 {
        flood.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let probe = tokio::time::timeout(WAIT, get(addr, "/healthz")).await;
    assert_eq!(probe.expect("the probe was answered").0, 200);
    drop(flood);
}
