//! The NVIDIA guest's health signals on the mixed L40S + A100 node, each with its
//! recovery: XID errors from the kernel log (critical, ignored by default, configured
//! lists, a storm), fatal AER errors, a degraded PCIe link, a hot-unplugged GPU, and
//! the configurable quiet period (including "never", NVIDIA's own behaviour).

mod nvidia_support;

use std::time::{Duration, Instant};

use integration_tests::Harness;
use kubelet_api::v1beta1 as pb;
use nvidia_support::*;

/// The mixed node serving the guest with `health` as its health configuration.
async fn with_health(health: &str) -> Harness {
    let config = format!(r#"{{"health":{health}}}"#);
    mixed_serving(Some(&config), GPU, MIXED_OFFERED).await
}

/// Waits until `id` is Unhealthy, then until it is Healthy again; returns how long the
/// second wait took.
async fn unhealthy_then_recovered(h: &Harness, id: &str) -> Duration {
    wait_until(h, GPU, |v| is_unhealthy(v, id)).await;
    let seen = Instant::now();
    wait_until(h, GPU, |v| is_healthy(v, id)).await;
    seen.elapsed()
}

/// A critical XID (79, fallen off the bus) makes its GPU Unhealthy (listed, not allocatable, refused), the others stay Healthy, and it recovers after the quiet period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_xid_marks_its_gpu_unhealthy_until_the_quiet_period_passes() {
    let h = with_health(r#"{"recoveryQuietSeconds":2}"#).await;
    let (a, b) = (uuid(&h, "0000:1a:00.0"), uuid(&h, "0000:1b:00.0"));
    h.node.log_xid("0000:1a:00.0", 79).expect("xid");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &a)).await;
    assert_eq!(
        (view.capacity(), view.allocatable()),
        (MIXED_OFFERED, MIXED_OFFERED - 1)
    );
    assert!(is_healthy(&view, &b), "{view:?}");
    let status = allocate(&h, GPU, &[&[&a]]).await.expect_err("unhealthy");
    assert!(status.message().contains("unhealthy"), "{status:?}");

    let seen = Instant::now();
    let view = wait_until(&h, GPU, |v| is_healthy(v, &a)).await;
    assert!(
        seen.elapsed() >= Duration::from_millis(1_500),
        "recovered after {:?}, before the 2 s quiet period",
        seen.elapsed()
    );
    assert_eq!(view.allocatable(), MIXED_OFFERED);
    allocate(&h, GPU, &[&[&a]])
        .await
        .expect("allocatable again");
}

/// A new XID during the quiet period restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_xid_restarts_the_quiet_period() {
    let h = with_health(r#"{"recoveryQuietSeconds":2}"#).await;
    let d = uuid(&h, "0000:88:00.0");
    h.node.log_xid("0000:88:00.0", 48).expect("xid");
    wait_until(&h, GPU, |v| is_unhealthy(v, &d)).await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    h.node.log_xid("0000:88:00.0", 48).expect("xid again");
    wait_until(&h, GPU, |v| is_healthy(v, &d)).await;
    assert!(
        first.elapsed() >= Duration::from_millis(2_800),
        "recovered {:?} after the first XID",
        first.elapsed()
    );
}

/// NVIDIA's application XIDs (13, 31, 43, 45, 68, 109) are ignored by default; an XID for an address that is no offered GPU changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ignored_xids_leave_the_gpu_healthy() {
    let h = with_health(r#"{"recoveryQuietSeconds":60}"#).await;
    let (a, b) = (uuid(&h, "0000:1a:00.0"), uuid(&h, "0000:3b:00.0"));
    for xid in [13, 31, 43, 45, 68, 109] {
        h.node.log_xid("0000:1a:00.0", xid).expect("xid");
    }
    h.node.log_xid("0000:b0:00.0", 79).expect("excluded GPU");
    // A sentinel after them: once it is seen, the lines before it were read too.
    h.node.log_xid("0000:3b:00.0", 79).expect("sentinel");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &b)).await;
    assert!(is_healthy(&view, &a), "{view:?}");
    assert_eq!(view.allocatable(), MIXED_OFFERED - 1);
}

/// `enabledXids` acts on a default-ignored XID (43) and `ignoredXids` ignores a critical one (79).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_xid_lists_change_what_counts() {
    let h =
        with_health(r#"{"enabledXids":[43],"ignoredXids":[79],"recoveryQuietSeconds":60}"#).await;
    let (a, c, d) = (
        uuid(&h, "0000:1a:00.0"),
        uuid(&h, "0000:3b:00.0"),
        uuid(&h, "0000:88:00.0"),
    );
    h.node
        .log_xid("0000:1a:00.0", 79)
        .expect("ignored by config");
    h.node
        .log_xid("0000:3b:00.0", 43)
        .expect("enabled by config");
    h.node.log_xid("0000:88:00.0", 48).expect("sentinel");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &d)).await;
    assert!(is_unhealthy(&view, &c), "{view:?}");
    assert!(is_healthy(&view, &a), "{view:?}");
}

/// An XID storm (hundreds of kernel-log lines, ignored XIDs on three GPUs, a critical one on a fourth, chatter in between) marks exactly the fourth, which recovers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xid_storm_marks_only_the_gpu_with_critical_xids() {
    let h = with_health(r#"{"recoveryQuietSeconds":2}"#).await;
    let events = [
        ("0000:1a:00.0", 13),
        ("0000:1b:00.0", 31),
        ("0000:88:00.0", 43),
        ("0000:3b:00.0", 94),
    ];
    h.node.log_xid_storm(&events, 30).expect("storm");
    let c = uuid(&h, "0000:3b:00.0");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &c)).await;
    for address in [
        "0000:1a:00.0",
        "0000:1b:00.0",
        "0000:88:00.0",
        "0000:89:00.0",
    ] {
        assert!(is_healthy(&view, &uuid(&h, address)), "{address}: {view:?}");
    }
    assert_eq!(view.allocatable(), MIXED_OFFERED - 1);
    wait_until(&h, GPU, |v| v.allocatable() == MIXED_OFFERED).await;
}

/// XIDs logged before the host started (still in the kernel's buffer after a restart,
/// a rollout or an upgrade) are the past: they do not take a GPU out of service again.
/// One logged after the start does, for that GPU alone; and a reload of the guest (its
/// configuration edited) reads again what was logged since the start, forgetting none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xids_from_before_the_start_are_not_replayed() {
    let h = mixed().await;
    h.node
        .log_xid("0000:89:00.0", 79)
        .expect("xid before start");
    let h = serve(h, None, testkit::guests::NVIDIA_GPU_POLICY).await;
    let e = uuid(&h, "0000:89:00.0");
    // Several rescans: the old XID never counts.
    let view = wait_until(&h, GPU, |v| {
        v.updates >= 1 && v.devices.len() == MIXED_OFFERED
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let view = h.kubelet.resource(GPU).unwrap_or(view);
    assert_eq!(view.allocatable(), MIXED_OFFERED, "{view:?}");

    h.node.log_xid("0000:89:00.0", 79).expect("xid after start");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &e)).await;
    assert_eq!(view.allocatable(), MIXED_OFFERED - 1, "{view:?}");

    // A reload (device IDs switched to indexes, so the new version is seen serving):
    // it still knows the XID logged since the start.
    std::fs::write(
        h.guests_dir.join("nvidia-gpu.json"),
        r#"{"deviceIdStrategy":"index"}"#,
    )
    .expect("edit the guest's configuration");
    let minor = h
        .node
        .gpus()
        .iter()
        .find(|g| g.address == "0000:89:00.0")
        .expect("the GPU")
        .minor
        .to_string();
    let view = wait_until(&h, GPU, |v| v.devices.iter().any(|d| d.id == minor)).await;
    assert!(is_unhealthy(&view, &minor), "{view:?}");
    assert_eq!(view.allocatable(), MIXED_OFFERED - 1, "{view:?}");
}

/// `recoveryQuietSeconds: null` keeps a GPU Unhealthy after an XID, as NVIDIA's plug-in does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_quiet_period_never_recovers() {
    let h = with_health(r#"{"recoveryQuietSeconds":null}"#).await;
    let a = uuid(&h, "0000:1a:00.0");
    h.node.log_xid("0000:1a:00.0", 79).expect("xid");
    wait_until(&h, GPU, |v| is_unhealthy(v, &a)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let view = h.kubelet.resource(GPU).expect("view");
    assert!(is_unhealthy(&view, &a), "{view:?}");
}

/// With `xids: false` the kernel log is not consulted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xid_checks_can_be_turned_off() {
    let h = with_health(r#"{"xids":false}"#).await;
    let a = uuid(&h, "0000:1a:00.0");
    h.node.log_xid("0000:1a:00.0", 79).expect("xid");
    h.node
        .set_pci_link_width("0000:1b:00.0", 4)
        .expect("sentinel");
    let b = uuid(&h, "0000:1b:00.0");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &b)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(is_healthy(&view, &a), "{view:?}");
    let view = h.kubelet.resource(GPU).expect("view");
    assert!(is_healthy(&view, &a), "{view:?}");
}

/// A rise of the fatal AER counter makes the GPU Unhealthy until the quiet period passes; the count found at start is the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_aer_errors_mark_the_gpu_unhealthy_until_quiet() {
    let h = mixed().await;
    // Errors from before the guest started are history, not a fault now.
    h.node.add_aer_fatal("0000:89:00.0", 5).expect("old errors");
    let h = serve(
        h,
        Some(r#"{"health":{"recoveryQuietSeconds":2}}"#),
        testkit::guests::NVIDIA_GPU_POLICY,
    )
    .await;
    let view = wait_until(&h, GPU, |v| v.devices.len() == MIXED_OFFERED).await;
    assert_eq!(view.allocatable(), MIXED_OFFERED, "{view:?}");
    let d = uuid(&h, "0000:88:00.0");
    h.node.add_aer_fatal("0000:88:00.0", 1).expect("AER fatal");
    let took = unhealthy_then_recovered(&h, &d).await;
    assert!(
        took >= Duration::from_millis(1_500),
        "recovered after {took:?}"
    );
}

/// A link trained below its maximum width makes the GPU Unhealthy for as long as it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_pcie_link_is_unhealthy_while_it_lasts() {
    let h = with_health(r#"{"recoveryQuietSeconds":60}"#).await;
    let c = uuid(&h, "0000:3b:00.0");
    h.node.set_pci_link_width("0000:3b:00.0", 8).expect("x8");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &c)).await;
    assert_eq!(view.allocatable(), MIXED_OFFERED - 1);
    h.node
        .set_pci_link_width("0000:3b:00.0", 16)
        .expect("x16 again");
    wait_until(&h, GPU, |v| is_healthy(v, &c)).await;
}

/// `pcieLink: false` ignores link width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_check_can_be_turned_off() {
    let h = with_health(r#"{"pcieLink":false}"#).await;
    let c = uuid(&h, "0000:3b:00.0");
    h.node.set_pci_link_width("0000:3b:00.0", 1).expect("x1");
    h.node.log_xid("0000:88:00.0", 79).expect("sentinel");
    let d = uuid(&h, "0000:88:00.0");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &d)).await;
    assert!(is_healthy(&view, &c), "{view:?}");
}

/// A hot-unplugged GPU stays listed as Unhealthy (capacity shows the loss, allocation is refused) and is Healthy again when it is plugged back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_unplugged_gpu_is_unhealthy_until_it_returns() {
    let h = with_health(r#"{"recoveryQuietSeconds":60}"#).await;
    let address = "0000:89:00.0";
    let e = uuid(&h, address);
    let unplugged = h.node.hot_unplug_gpu(address).expect("unplug");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &e)).await;
    assert_eq!(
        (view.capacity(), view.allocatable()),
        (MIXED_OFFERED, MIXED_OFFERED - 1)
    );
    let status = allocate(&h, GPU, &[&[&e]]).await.expect_err("gone");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    h.node.hot_plug_gpu(&unplugged).expect("plug back");
    let view = wait_until(&h, GPU, |v| is_healthy(v, &e)).await;
    assert_eq!(view.allocatable(), MIXED_OFFERED);
    let answer = allocate(&h, GPU, &[&[&e]])
        .await
        .expect("allocatable again");
    assert_eq!(
        env(&answer.container_responses[0], "NVIDIA_VISIBLE_DEVICES"),
        Some(e.as_str())
    );
}

/// A GPU whose config space reads all ones (fallen off the bus) is Unhealthy while it stays that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_fallen_off_the_bus_is_unhealthy() {
    let h = with_health("{}").await;
    let b = uuid(&h, "0000:1b:00.0");
    h.node
        .set_gpu_fallen_off_bus("0000:1b:00.0")
        .expect("fall off");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &b)).await;
    assert_eq!(view.capacity(), MIXED_OFFERED);
    assert!(
        view.devices
            .iter()
            .filter(|d| d.id != b)
            .all(|d| d.health == pb::HEALTHY),
        "{view:?}"
    );
}

/// Unbinding a GPU from the driver is deliberate: it leaves the list rather than turning Unhealthy, and comes back when bound again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_gpu_leaves_the_list_and_returns_when_bound() {
    let h = with_health("{}").await;
    let address = "0000:3b:00.0";
    let c = uuid(&h, address);
    h.node.unbind_gpu_driver(address).expect("unbind");
    let view = wait_until(&h, GPU, |v| v.devices.len() == MIXED_OFFERED - 1).await;
    assert!(health(&view, &c).is_none());
    assert_eq!(view.allocatable(), MIXED_OFFERED - 1);
    h.node.bind_pci_driver(address, "nvidia").expect("bind");
    let view = wait_until(&h, GPU, |v| v.devices.len() == MIXED_OFFERED).await;
    assert!(is_healthy(&view, &c));
}
