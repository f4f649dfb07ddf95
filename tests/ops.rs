//! The operator's endpoints: `/metrics` reflects what the host does, `/healthz` answers,
//! `/readyz` says ready only while every guest is loaded and every resource registered.
//! (One test in this binary: metrics are process-wide.)

use std::time::Duration;

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WIDGET: &str = "example.com/widget";

/// A plain HTTP/1.0 GET: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

async fn eventually_get(addr: std::net::SocketAddr, path: &str, code: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (got, body) = get(addr, path).await;
        if got == code {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let why = eventually_get(addr, "/readyz", 503).await;
    assert!(
        why.contains("broken.wasm") && why.contains("not a WebAssembly binary"),
        "{why}"
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
    std::fs::remove_file(h.guests_dir.join("broken.wasm")).unwrap();
    eventually_get(addr, "/readyz", 200).await;
}

/// A client that connects and never finishes its request head is cut off (it would
/// otherwise hold a connection forever), and a flood of such clients, more than the
/// server serves at once, delays a probe but never starves it. (No guests: this test
/// touches no metric the other one reads.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_cannot_starve_the_probes() {
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
