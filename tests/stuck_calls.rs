//! A guest call stuck inside a host function (here a WASI sleep: a blocking poll that
//! epoch interruption cannot reach) is answered with `DeadlineExceeded` within its
//! deadline plus grace, its thread is cut loose, and the guest's next calls run on a
//! fresh instance. Stuck threads are capped per guest — across reloads too — so repeated
//! stuck calls and reloads cannot grow threads or memory without bound, and a guest that
//! keeps getting stuck is marked faulty like any crash loop.
//!
//! Alone in its test binary, so that the thread counts it reads are its own.

use std::time::{Duration, Instant};

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use serde_json::json;
use tonic::Code;
use wasm_device_plugin::runtime::guest::WALL_CLOCK_GRACE;
use wasm_device_plugin::runtime::worker::MAX_STUCK_THREADS;

const SLEEPER: &str = "example.com/sleeper";
const DEADLINE: Duration = Duration::from_millis(300);

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn sleeper_config(generation: u32) -> serde_json::Value {
    json!({
        "resources": [{ "name": SLEEPER, "class": "sleeper" }],
        "faults": { "allocate": "sleep" },
        // Changes the file, so that writing it is a reload.
        "probe": format!("/generation/{generation}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_calls_are_cut_loose_and_bounded() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "sleeper", &widgets(3));
    h.add_conformance("sleeper", sleeper_config(0));
    let mut config = h.config();
    config.limits.deadlines.allocate = DEADLINE;
    config.limits.fault_cooldown = Duration::from_secs(600);
    h.start_host_with(config).await;
    h.kubelet
        .wait_for(SLEEPER, WAIT, |v| v.allocatable() == 3)
        .await
        .expect("serves");
    let before = threads();

    // The first stuck call: answered on time, and the guest's next call (a rescan on a
    // fresh thread) still sees the node.
    let started = Instant::now();
    let err = h
        .kubelet
        .allocate(SLEEPER, vec![vec!["w0".into()]])
        .await
        .expect_err("the sleeping call cannot answer");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took < DEADLINE + WALL_CLOCK_GRACE + Duration::from_secs(2),
        "answered after {took:?}"
    );
    h.node.set_widget_health("sleeper", "w1", false).unwrap();
    h.kubelet
        .wait_for(SLEEPER, WAIT, |v| v.allocatable() == 2)
        .await
        .expect("the guest's next calls run on a fresh instance");

    // Up to the cap, each stuck call costs one thread; then the guest takes no calls
    // (answered at once) and its devices are reported Unhealthy.
    for _ in 1..MAX_STUCK_THREADS {
        let err = h
            .kubelet
            .allocate(SLEEPER, vec![vec!["w0".into()]])
            .await
            .expect_err("sleeps");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
    let view = h
        .kubelet
        .wait_for(SLEEPER, WAIT, |v| v.allocatable() == 0)
        .await
        .expect("a guest that keeps getting stuck is reported Unhealthy");
    assert_eq!(view.capacity(), 3, "its devices stay listed");
    let started = Instant::now();
    let err = h
        .kubelet
        .allocate(SLEEPER, vec![vec!["w0".into()]])
        .await
        .expect_err("refused");
    assert!(
        started.elapsed() < DEADLINE,
        "refused at once, not after another deadline: {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err.code(), Code::Unavailable | Code::InvalidArgument),
        "{err:?}"
    );
    let metrics = wasm_device_plugin::metrics::metrics().encode();
    assert!(
        metrics.contains(&format!(
            r#"wdp_guest_stuck_threads{{guest="sleeper"}} {MAX_STUCK_THREADS}"#
        )),
        "{metrics}"
    );

    // Reloads try new versions, but the cap is the guest's: a version cannot start
    // while its stuck threads are out (the previous one keeps its registration), and
    // no thread piles up.
    for generation in 1..=5 {
        let mut status = h.host().status();
        let tried = |s: &wasm_device_plugin::node::Status| s.reloads_ok + s.reloads_refused;
        let before = tried(&status.borrow());
        h.add_conformance("sleeper", sleeper_config(generation));
        tokio::time::timeout(WAIT, status.wait_for(|s| tried(s) > before))
            .await
            .expect("the reload is tried in time")
            .expect("status");
        let _ = h
            .kubelet
            .allocate(SLEEPER, vec![vec!["w0".into()]])
            .await
            .expect_err("still out of service");
    }
    let grown = threads().saturating_sub(before);
    assert!(
        grown <= MAX_STUCK_THREADS + 3,
        "{grown} threads more than before the stuck calls (cap {MAX_STUCK_THREADS})"
    );
}
