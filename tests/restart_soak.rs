//! Restarts, over and over: the kubelet stand-in restarted 100 times (C25, C31, and C27
//! across kubelet restarts), and the host restarted while the kubelet stays (C27).
//!
//! The peers' worst bugs are capacity 0 after a kubelet restart and registrations lost in
//! races; these tests restart the way a kubelet does (`kubelet.sock` deleted and created
//! anew, every plug-in socket removed, every stream dropped) and check what the kubelet
//! sees each time, and that the host's process does not grow while doing it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use kubelet_api::v1beta1 as pb;
use serde_json::json;
use testkit::kubelet::ResourceView;

const WIDGET: &str = "example.com/widget";
const GPU: &str = "nvidia.com/gpu";
const RESTARTS: usize = 100;
/// From the kubelet restart to the host's new `Register`: a protocol requirement (the
/// kubelet shows the resource at 0 until then), not a speed benchmark.
const REREGISTER_WITHIN: Duration = Duration::from_secs(1);
/// Iteration at which the baseline for growth is taken (caches and pools warmed up).
const BASELINE_AT: usize = 10;
/// Open descriptors may differ by this much between the baseline and the end.
///
/// Per registration the process (host and stand-in together) holds a constant set: the
/// plug-in's listening socket and the stand-in's stream connection (two ends, both in
/// process); the Register connection is closed once answered. A leak of one connection
/// per restart would add 2 × 90 = 180 descriptors by iteration 100. The slack covers a
/// connection or two still closing at the moment of counting.
const FD_SLACK: i64 = 8;
/// Resident memory may grow by at most this much between the baseline and the end.
///
/// Allocator fragmentation and tokio's blocking-thread pool (threads come and go) move
/// RSS by a few MiB without any leak. What must not happen is per-restart growth: a
/// leaked registration (tonic server, connection buffers, a guest instance with its linear
/// memory) costs from hundreds of KiB to MiBs, times 90 restarts.
const RSS_SLACK_KIB: i64 = 16 * 1024;

/// The tests of this file run one at a time: the soak counts this whole process's
/// descriptors and memory, which another test's host would change.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn open_fds() -> i64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count() as i64
}

/// `VmRSS` of this process (host and stand-in), in KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn sorted_ids(view: &ResourceView) -> BTreeSet<String> {
    view.devices.iter().map(|d| d.id.clone()).collect()
}

fn accepted(h: &Harness, resource: &str) -> usize {
    h.kubelet
        .registrations()
        .iter()
        .filter(|r| r.request.resource_name == resource && r.error.is_none())
        .count()
}

/// C25, C31, C27 (kubelet restarts): 100 kubelet restarts. Each time the host registers
/// again within 1 s of the restart, exactly once, on a socket name never used before,
/// the same devices arrive all Healthy and allocatable, and allocation works; open file
/// descriptors and resident memory stay flat from iteration 10 to 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_kubelet_restarts_each_re_register_within_a_second_without_leaks() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(4));
    h.add_conformance(
        "widgets",
        json!({ "resources": [{ "name": WIDGET, "class": "widget" }] }),
    );
    h.start_host().await;
    let first = h
        .kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.devices.len() == 4)
        .await
        .unwrap();
    let expected_ids = sorted_ids(&first);
    let mut endpoints: BTreeSet<String> = h
        .kubelet
        .registrations()
        .iter()
        .map(|r| r.request.endpoint.clone())
        .collect();

    let mut register_times = Vec::with_capacity(RESTARTS);
    let mut list_times = Vec::with_capacity(RESTARTS);
    let mut baseline = None;
    for i in 1..=RESTARTS {
        let before = accepted(&h, WIDGET);
        let restarted = Instant::now();
        h.kubelet.restart().await.unwrap();
        let registrations = h
            .kubelet
            .wait_for_registrations(WIDGET, before + 1, WAIT)
            .await
            .unwrap_or_else(|e| panic!("restart {i}: {e}"));
        let registration = registrations[before].clone();
        let took = registration.at.saturating_duration_since(restarted);
        assert!(
            took < REREGISTER_WITHIN,
            "restart {i}: the host registered again only {took:?} after the kubelet restart"
        );
        register_times.push(took);
        assert!(
            endpoints.insert(registration.request.endpoint.clone()),
            "restart {i}: socket name {} used before",
            registration.request.endpoint
        );

        let endpoint = h.plugin_dir.join(&registration.request.endpoint);
        let view = h
            .kubelet
            .wait_for(WIDGET, WAIT, |v| {
                v.connected && v.endpoint == endpoint && v.updates >= 1
            })
            .await
            .unwrap_or_else(|e| panic!("restart {i}: no device list: {e}"));
        list_times.push(restarted.elapsed());
        assert_eq!(sorted_ids(&view), expected_ids, "restart {i}: device IDs");
        assert_eq!(
            (view.capacity(), view.allocatable()),
            (4, 4),
            "restart {i}: capacity and allocatable"
        );
        assert_eq!(
            accepted(&h, WIDGET),
            before + 1,
            "restart {i}: exactly one new registration"
        );
        if i % 25 == 0 {
            h.kubelet
                .allocate(WIDGET, vec![vec![format!("w{}", i % 4)]])
                .await
                .unwrap_or_else(|e| panic!("restart {i}: allocate: {e}"));
        }

        if i == BASELINE_AT || i == RESTARTS {
            // Let connections of the previous registration finish closing.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let sample = (open_fds(), rss_kib());
            eprintln!("restart {i}: {} open fds, VmRSS {} KiB", sample.0, sample.1);
            match baseline {
                None => baseline = Some(sample),
                Some((fds, rss)) => {
                    assert!(
                        (sample.0 - fds).abs() <= FD_SLACK,
                        "open fds went from {fds} at restart {BASELINE_AT} to {} at restart {i}",
                        sample.0
                    );
                    assert!(
                        sample.1 - rss <= RSS_SLACK_KIB,
                        "VmRSS went from {rss} KiB at restart {BASELINE_AT} to {} KiB at restart {i}",
                        sample.1
                    );
                }
            }
        }
    }
    // Still one registration per restart once things are quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted(&h, WIDGET), RESTARTS + 1, "registrations in all");
    assert_eq!(
        h.plugin_sockets().len(),
        1,
        "one live plug-in socket: {:?}",
        h.plugin_sockets()
    );
    h.stop_host().await;

    let max = register_times.iter().max().unwrap();
    let mean = register_times.iter().sum::<Duration>() / register_times.len() as u32;
    let max_list = list_times.iter().max().unwrap();
    eprintln!(
        "{RESTARTS} kubelet restarts: re-registration after max {max:?}, mean {mean:?}; \
         device list after max {max_list:?}"
    );
}

/// C27 (host restarts): the host stopped and started again while the kubelet keeps
/// running. In between, the kubelet keeps the capacity and counts nothing allocatable;
/// afterwards it sees the resource come back with the same device IDs, all Healthy,
/// and an assignment it replays gets the same answer as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restart_brings_back_the_same_device_ids() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut h = Harness::dgx().await;
    h.add_guest_with_policy(
        "nvidia-gpu",
        testkit::guests::NVIDIA_GPU_WASM,
        None,
        Some(testkit::guests::NVIDIA_GPU_POLICY),
    );
    h.start_host().await;
    let before = h
        .kubelet
        .wait_for(GPU, WAIT, |v| v.connected && v.devices.len() == 8)
        .await
        .unwrap();
    let ids_before = sorted_ids(&before);
    let pair: Vec<String> = ids_before.iter().take(2).cloned().collect();
    let answer_before = h
        .kubelet
        .allocate(GPU, vec![pair.clone()])
        .await
        .expect("allocate before the restart");

    for round in 1..=3 {
        h.stop_host().await;
        let down = h
            .kubelet
            .wait_for(GPU, WAIT, |v| !v.connected)
            .await
            .unwrap();
        assert_eq!(
            (down.capacity(), down.allocatable()),
            (8, 0),
            "round {round}: while the host is down"
        );

        h.start_host().await;
        h.kubelet
            .wait_for_registrations(GPU, round + 1, WAIT)
            .await
            .unwrap();
        let after = h
            .kubelet
            .wait_for(GPU, WAIT, |v| {
                v.connected && v.updates >= 1 && v.devices.len() == 8
            })
            .await
            .unwrap();
        assert_eq!(
            sorted_ids(&after),
            ids_before,
            "round {round}: the same device IDs"
        );
        assert!(
            after.devices.iter().all(|d| d.health == pb::HEALTHY),
            "round {round}: {:?}",
            after.devices
        );
        assert_eq!((after.capacity(), after.allocatable()), (8, 8));
        let answer_after = h
            .kubelet
            .allocate(GPU, vec![pair.clone()])
            .await
            .expect("allocate after the restart");
        assert_eq!(
            answer_after, answer_before,
            "round {round}: the replayed assignment gets the same answer"
        );
    }
    h.stop_host().await;
}

/// A host killed before it could clean up (SIGKILL, OOM) leaves its sockets in the
/// device-plugin directory, where the kubelet would keep them until its own restart.
/// The next start removes those, and only those: another plug-in's socket, dead or
/// alive, stays where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_removes_the_sockets_a_killed_host_left_and_no_one_elses() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(2));
    h.add_guest("widgets", testkit::guests::CONFORMANCE_WASM, None);
    let dir = h.plugin_dir.clone();
    // What a killed run leaves: its sockets, with nobody listening on them.
    let left = [
        wasm_device_plugin::kubelet::socket::unique_name(WIDGET, &dir),
        wasm_device_plugin::kubelet::socket::unique_name("example.com/other", &dir),
    ];
    for name in &left {
        drop(std::os::unix::net::UnixListener::bind(dir.join(name)).expect("bind"));
    }
    // Another plug-in's: one crashed, one serving.
    drop(std::os::unix::net::UnixListener::bind(dir.join("vendor-x.sock")).expect("bind"));
    let _serving = std::os::unix::net::UnixListener::bind(dir.join("vendor-y.sock")).expect("bind");

    h.start_host().await;
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.devices.len() == 2)
        .await
        .expect("the host serves");
    let sockets = h.plugin_sockets();
    for name in &left {
        assert!(
            !sockets.contains(name),
            "{name} is still there: {sockets:?}"
        );
    }
    for name in ["vendor-x.sock", "vendor-y.sock"] {
        assert!(
            sockets.iter().any(|s| s == name),
            "{name} was removed: {sockets:?}"
        );
    }
    // Besides the foreign two, exactly the socket now serving the widgets.
    assert_eq!(sockets.len(), 3, "{sockets:?}");
}
