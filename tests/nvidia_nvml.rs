//! The NVIDIA guest with NVML, through the kubelet stand-in: a simulated DGX H100 whose
//! `libnvidia-ml.so.1` is testkit's NVML double (built in the test build, answering the
//! NVML calls the host makes from a fixture consistent with the node's sysfs).
//!
//! What a kubelet and an operator would see: MIG `single` and `mixed` as NVIDIA's
//! plug-in names and answers them, preferred allocation that follows NVLink, an NVML
//! XID that takes exactly one GPU or MIG device out of service, GFD's node labels in an
//! NFD feature file, and a hung NVML that stalls nobody.

mod nvidia_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::{Harness, WAIT};
use nvidia_support::*;
use testkit::simnode::MigProfile;

/// The DGX's GPUs by PCI address: NUMA node 0 then 1, each behind its own PCIe switch.
const NUMA0: [&str; 4] = [
    "0000:18:00.0",
    "0000:2a:00.0",
    "0000:3a:00.0",
    "0000:5d:00.0",
];
const NUMA1: [&str; 4] = [
    "0000:9a:00.0",
    "0000:ab:00.0",
    "0000:ba:00.0",
    "0000:db:00.0",
];
const FEATURE_FILE: &str = "/etc/kubernetes/node-feature-discovery/features.d/wdp-nvidia-gpu";

/// The DGX H100 with NVML; MIG on the first two GPUs: 7 × 1g.10gb and 2 × 3g.40gb.
async fn dgx_with_mig() -> (Harness, Vec<String>, Vec<String>) {
    let mut h = Harness::dgx().await;
    h.node.enable_nvml().expect("NVML double installed");
    let small = h
        .node
        .enable_mig(NUMA0[0], &[MigProfile::H100_1G_10GB; 7])
        .expect("MIG on GPU 0");
    let large = h
        .node
        .enable_mig(NUMA0[1], &[MigProfile::H100_3G_40GB; 2])
        .expect("MIG on GPU 1");
    (h, small, large)
}

async fn serve_shipped(h: Harness, config: &str) -> Harness {
    serve(h, Some(config), testkit::guests::NVIDIA_GPU_POLICY).await
}

fn uuids(h: &Harness, addresses: &[&str]) -> BTreeSet<String> {
    addresses.iter().map(|a| uuid(h, a)).collect()
}

/// The DGX with NVML and NVLink bridges pairing each GPU of NUMA node 0 with one of NUMA
/// node 1 (4 links each): what sysfs alone would prefer (two GPUs of one NUMA node) is the
/// wrong answer there. Returns the pairs.
async fn nvlink_across_numa() -> (Harness, Vec<(&'static str, &'static str, u32)>) {
    let mut h = Harness::dgx().await;
    h.node.enable_nvml().expect("NVML double");
    let pairs: Vec<(&str, &str, u32)> = NUMA0
        .iter()
        .zip(NUMA1.iter())
        .map(|(a, b)| (*a, *b, 4))
        .collect();
    h.node.set_nvlink_pairs(&pairs).expect("NVLink pairs");
    (h, pairs)
}

/// Every GPU's UUID, NUMA node 0 first.
fn all_uuids(h: &Harness) -> Vec<String> {
    NUMA0
        .iter()
        .chain(NUMA1.iter())
        .map(|a| uuid(h, a))
        .collect()
}

/// `/dev/nvidia-caps/nvidia-cap<N>` of a MIG device's GPU and compute instance, by the
/// driver's numbering (what `/proc/driver/nvidia-caps/mig-minors` lists).
fn cap_nodes(minor: u32, gi: u32, ci: u32) -> [String; 2] {
    let gi_minor = 3 + minor * 135 + gi * 9;
    [
        format!("/dev/nvidia-caps/nvidia-cap{gi_minor}"),
        format!("/dev/nvidia-caps/nvidia-cap{}", gi_minor + 1 + ci),
    ]
}

#[tokio::test]
async fn mig_mixed_advertises_a_resource_per_profile_and_hands_out_the_mig_nodes() {
    let (h, small, large) = dgx_with_mig().await;
    let h = serve_shipped(h, r#"{"migStrategy": "mixed"}"#).await;
    let whole: Vec<&str> = NUMA0[2..].iter().chain(NUMA1.iter()).copied().collect();
    let gpus = wait_until(&h, GPU, |v| v.devices.len() == 6).await;
    assert_eq!(
        ids(&gpus),
        uuids(&h, &whole),
        "whole GPUs: those without MIG"
    );
    let ones = wait_until(&h, "nvidia.com/mig-1g.10gb", |v| v.devices.len() == 7).await;
    assert_eq!(ids(&ones), small.iter().cloned().collect());
    let threes = wait_until(&h, "nvidia.com/mig-3g.40gb", |v| v.devices.len() == 2).await;
    assert_eq!(ids(&threes), large.iter().cloned().collect());
    assert!(
        threes
            .devices
            .iter()
            .all(|d| integration_tests::view::numa_nodes(d) == vec![0]),
        "a MIG device sits on its GPU's NUMA node"
    );

    // One 3g.40gb: NVIDIA_VISIBLE_DEVICES names the MIG device; the container gets the
    // parent GPU's node, the control nodes and the two capability nodes of its instance.
    let answer = allocate(&h, "nvidia.com/mig-3g.40gb", &[&[large[1].as_str()]])
        .await
        .expect("Allocate succeeds");
    let c = &answer.container_responses[0];
    assert_eq!(env(c, "NVIDIA_VISIBLE_DEVICES"), Some(large[1].as_str()));
    let parent = h.node.gpu(NUMA0[1]).expect("GPU 1").minor;
    let mig = &h.node.mig_devices(NUMA0[1])[1];
    let paths = device_paths(c);
    for node in cap_nodes(parent, mig.gpu_instance, mig.compute_instance) {
        assert!(paths.contains(&node), "{node} missing from {paths:?}");
    }
    assert!(paths.contains(&format!("/dev/nvidia{parent}")), "{paths:?}");
    assert!(paths.contains("/dev/nvidiactl"), "{paths:?}");
    // Nothing of the other MIG device or of another GPU.
    let other = &h.node.mig_devices(NUMA0[1])[0];
    for node in cap_nodes(parent, other.gpu_instance, other.compute_instance) {
        assert!(
            !paths.contains(&node),
            "{node} belongs to another MIG device"
        );
    }
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.starts_with("/dev/nvidia") && p[11..].chars().all(|c| c.is_ascii_digit()))
            .count(),
        1,
        "one GPU node: {paths:?}"
    );

    // An unknown MIG UUID is refused before the guest sees it.
    assert!(
        allocate(
            &h,
            "nvidia.com/mig-3g.40gb",
            &[&["MIG-00000000-0000-0000-0000-000000000000"]]
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn mig_single_backs_nvidia_com_gpu_with_mig_devices_and_refuses_mixed_layouts() {
    // Every GPU in MIG mode with the same profile: nvidia.com/gpu lists MIG devices.
    let mut h = Harness::dgx().await;
    h.node.enable_nvml().expect("NVML double");
    let mut all = BTreeSet::new();
    for address in NUMA0.iter().chain(NUMA1.iter()) {
        all.extend(
            h.node
                .enable_mig(address, &[MigProfile::H100_3G_40GB; 2])
                .expect("MIG"),
        );
    }
    let h = serve_shipped(h, r#"{"migStrategy": "single"}"#).await;
    let view = wait_until(&h, GPU, |v| v.devices.len() == 16).await;
    assert_eq!(ids(&view), all);
    let first = view.devices[0].id.clone();
    let answer = allocate(&h, GPU, &[&[first.as_str()]])
        .await
        .expect("Allocate");
    assert_eq!(
        env(&answer.container_responses[0], "NVIDIA_VISIBLE_DEVICES"),
        Some(first.as_str())
    );
    assert!(
        device_paths(&answer.container_responses[0])
            .iter()
            .any(|p| p.starts_with("/dev/nvidia-caps/")),
        "MIG capability nodes handed out"
    );
    drop(h);

    // Two profiles on the node: NVIDIA's plug-in refuses `single`; so does the guest,
    // and nvidia.com/gpu offers nothing rather than the wrong devices.
    let (h, small, large) = dgx_with_mig().await;
    let h = serve_shipped(h, r#"{"migStrategy": "single"}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = h.kubelet.resource(GPU).map(|v| ids(&v)).unwrap_or_default();
    assert!(
        listed
            .iter()
            .all(|id| !small.contains(id) && !large.contains(id)),
        "no MIG device offered under an inconsistent layout: {listed:?}"
    );
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn mig_index_ids_are_gpu_and_mig_indexes_as_nvidia_names_them() {
    let (h, _small, large) = dgx_with_mig().await;
    let h = serve_shipped(
        h,
        r#"{"migStrategy": "mixed", "deviceIdStrategy": "index"}"#,
    )
    .await;
    let index = h.node.nvml_index(NUMA0[1]).expect("NVML index");
    let view = wait_until(&h, "nvidia.com/mig-3g.40gb", |v| v.devices.len() == 2).await;
    assert_eq!(
        ids(&view),
        [format!("{index}:0"), format!("{index}:1")]
            .into_iter()
            .collect()
    );
    let answer = allocate(
        &h,
        "nvidia.com/mig-3g.40gb",
        &[&[format!("{index}:1").as_str()]],
    )
    .await
    .expect("Allocate");
    let visible = env(&answer.container_responses[0], "NVIDIA_VISIBLE_DEVICES").unwrap_or("");
    assert!(
        visible == format!("{index}:1") || visible == large[1],
        "NVIDIA_VISIBLE_DEVICES {visible:?}"
    );
}

#[tokio::test]
async fn preferred_allocation_follows_nvlink_across_numa_nodes() {
    let (h, pairs) = nvlink_across_numa().await;
    let h = serve_shipped(h, "{}").await;
    wait_until(&h, GPU, |v| v.devices.len() == 8).await;
    let all = all_uuids(&h);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let pair_of = |a: &str| -> BTreeSet<String> {
        let (x, y, _) = pairs
            .iter()
            .find(|(x, y, _)| *x == a || *y == a)
            .expect("paired");
        uuids(&h, &[x, y])
    };
    let got: BTreeSet<String> = preferred(&h, GPU, &all, &[], 2).await.into_iter().collect();
    assert!(
        pairs.iter().any(|(a, _, _)| pair_of(a) == got),
        "two GPUs joined by NVLink, got {got:?}"
    );
    let must = uuid(&h, NUMA0[2]);
    let got: BTreeSet<String> = preferred(&h, GPU, &all, &[must.as_str()], 2)
        .await
        .into_iter()
        .collect();
    assert_eq!(got, pair_of(NUMA0[2]), "the must-include GPU's NVLink peer");
}

#[tokio::test]
async fn preferred_allocation_without_nvml_keeps_the_sysfs_order() {
    // The same node and request without the NVML grant: NUMA decides, as before.
    let (h, _pairs) = nvlink_across_numa().await;
    let h = serve(
        h,
        Some("{}"),
        &policy_with(serde_json::json!({"nvml": false})),
    )
    .await;
    wait_until(&h, GPU, |v| v.devices.len() == 8).await;
    let all = all_uuids(&h);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let got: BTreeSet<String> = preferred(&h, GPU, &all, &[], 2).await.into_iter().collect();
    assert!(
        got.is_subset(&uuids(&h, &NUMA0)) || got.is_subset(&uuids(&h, &NUMA1)),
        "one NUMA node: {got:?}"
    );
}

#[tokio::test]
async fn an_nvml_xid_takes_exactly_that_mig_device_or_gpu_out_of_service() {
    let (h, small, _large) = dgx_with_mig().await;
    let h = serve_shipped(h, r#"{"migStrategy": "mixed"}"#).await;
    wait_until(&h, "nvidia.com/mig-1g.10gb", |v| v.devices.len() == 7).await;
    wait_until(&h, GPU, |v| v.devices.len() == 6).await;

    // XID 48 (double-bit ECC) on the third MIG device of GPU 0.
    let target = &h.node.mig_devices(NUMA0[0])[2];
    h.node
        .nvml_xid(
            NUMA0[0],
            Some((target.gpu_instance, target.compute_instance)),
            48,
        )
        .expect("event");
    let view = wait_until(&h, "nvidia.com/mig-1g.10gb", |v| is_unhealthy(v, &small[2])).await;
    for (i, id) in small.iter().enumerate() {
        if i != 2 {
            assert!(is_healthy(&view, id), "{id} is not the one that failed");
        }
    }

    // An application XID (13) is not a device fault; XID 79 on a whole GPU is.
    let whole = uuid(&h, NUMA1[1]);
    h.node.nvml_xid(NUMA1[0], None, 13).expect("event");
    h.node.nvml_xid(NUMA1[1], None, 79).expect("event");
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &whole)).await;
    let others: Vec<&str> = NUMA0[2..]
        .iter()
        .chain(NUMA1.iter())
        .copied()
        .filter(|a| *a != NUMA1[1])
        .collect();
    for address in others {
        assert!(
            is_healthy(&view, &uuid(&h, address)),
            "{address} stays healthy"
        );
    }
    // The kubelet refuses nothing here itself; the host refuses an unhealthy device.
    assert!(allocate(&h, GPU, &[&[whole.as_str()]]).await.is_err());
}

#[tokio::test]
async fn gpu_feature_labels_are_written_for_nfd_with_gfds_names() {
    let (h, _small, _large) = dgx_with_mig().await;
    let h = serve_shipped(h, r#"{"migStrategy": "mixed"}"#).await;
    wait_until(&h, GPU, |v| v.devices.len() == 6).await;
    let labels = wait_for_labels(&h, |l| l.contains_key("nvidia.com/gpu.product")).await;
    let expect = [
        ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
        ("nvidia.com/gpu.family", "hopper"),
        ("nvidia.com/gpu.compute.major", "9"),
        ("nvidia.com/gpu.compute.minor", "0"),
        ("nvidia.com/gpu.memory", "81559"),
        ("nvidia.com/cuda.driver.major", "580"),
        ("nvidia.com/cuda.driver.minor", "159"),
        ("nvidia.com/cuda.driver.rev", "04"),
        ("nvidia.com/cuda.driver-version.full", "580.159.04"),
        ("nvidia.com/cuda.runtime.major", "13"),
        ("nvidia.com/cuda.runtime.minor", "0"),
        ("nvidia.com/cuda.runtime-version.full", "13.0"),
        ("nvidia.com/mig.capable", "true"),
        ("nvidia.com/mig.strategy", "mixed"),
        ("nvidia.com/mig-1g.10gb.count", "7"),
        ("nvidia.com/mig-3g.40gb.count", "2"),
        ("nvidia.com/mig-3g.40gb.slices.gi", "3"),
    ];
    for (name, value) in expect {
        assert_eq!(
            labels.get(name).map(String::as_str),
            Some(value),
            "{name} in {labels:?}"
        );
    }
    assert!(labels.contains_key("nvidia.com/gpu.count"), "{labels:?}");
    assert!(
        labels.keys().all(|k| k.starts_with("nvidia.com/")),
        "{labels:?}"
    );
}

#[tokio::test]
async fn labels_stay_within_the_granted_prefixes_and_leave_with_the_guest() {
    let mut h = Harness::dgx().await;
    h.node.enable_nvml().expect("NVML double");
    let policy = policy_with(serde_json::json!({"labelPrefixes": ["nvidia.com/gpu."]}));
    let h = serve(h, Some("{}"), &policy).await;
    wait_until(&h, GPU, |v| v.devices.len() == 8).await;
    let labels = wait_for_labels(&h, |l| l.contains_key("nvidia.com/gpu.count")).await;
    assert_eq!(labels["nvidia.com/gpu.count"], "8");
    assert!(
        labels.keys().all(|k| k.starts_with("nvidia.com/gpu.")),
        "only the granted prefix: {labels:?}"
    );
    assert!(!labels.contains_key("nvidia.com/mig.strategy"));

    // The operator removes the guest: its labels go with it.
    for ext in ["wasm", "json", "policy.json"] {
        let _ = std::fs::remove_file(h.guests_dir.join(format!("nvidia-gpu.{ext}")));
    }
    let path = h.node.path(FEATURE_FILE);
    let deadline = tokio::time::Instant::now() + WAIT;
    while path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "label file left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hung_nvml_stalls_no_guest_and_its_gpus_return_when_it_answers() {
    let mut h = Harness::dgx().await;
    h.node.enable_nvml().expect("NVML double");
    integration_tests::add_widgets(&h.node, "widget", &integration_tests::widgets(2));
    h.add_conformance(
        "widgets",
        serde_json::json!({"resources": [{"name": "example.com/widget", "class": "widget"}]}),
    );
    h.add_guest_with_policy(
        "nvidia-gpu",
        testkit::guests::NVIDIA_GPU_WASM,
        Some("{}"),
        Some(testkit::guests::NVIDIA_GPU_POLICY),
    );
    let mut config = h.config();
    config.nvml.stale_after = Duration::from_millis(500);
    config.nvml.refresh = Duration::from_millis(100);
    h.start_host_with(config).await;
    wait_until(&h, GPU, |v| v.devices.len() == 8).await;
    wait_until(&h, "example.com/widget", |v| v.devices.len() == 2).await;

    let gpu = uuid(&h, NUMA0[0]);
    h.node.set_nvml_hang(true).expect("hang");
    // Once the reading is stale, the guest takes the GPUs out of service, as NVIDIA's
    // plug-in does when NVML stops answering (a GPU that fell off the bus hangs it)...
    let view = wait_until(&h, GPU, |v| is_unhealthy(v, &gpu)).await;
    assert_eq!(ids(&view).len(), 8, "still listed, not gone");
    // ...and every guest still answers at once: NVML is read on its own thread.
    let started = std::time::Instant::now();
    let refused = allocate(&h, GPU, &[&[gpu.as_str()]]).await;
    assert!(
        refused.is_err_and(|s| s.message().contains("unhealthy")),
        "an unhealthy GPU is refused"
    );
    allocate(&h, "example.com/widget", &[&["w0"]])
        .await
        .expect("widget allocation");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls waited on NVML: {:?}",
        started.elapsed()
    );
    // NVML answers again: the GPUs come back.
    h.node.set_nvml_hang(false).expect("unhang");
    wait_until(&h, GPU, |v| is_healthy(v, &gpu)).await;
    allocate(&h, GPU, &[&[gpu.as_str()]])
        .await
        .expect("GPU allocation once NVML answers");
}

#[tokio::test]
async fn without_the_library_the_guest_serves_from_sysfs_as_before() {
    // No NVML on the node (the fixture has none): MIG strategies other than `none` have
    // nothing to act on, GPUs with MIG instances stay withheld, nothing else changes.
    let h = Harness::dgx().await;
    h.node
        .add_mig_instance(NUMA0[0], 1, 0)
        .expect("MIG instance in procfs");
    let h = serve_shipped(h, r#"{"migStrategy": "mixed"}"#).await;
    let view = wait_until(&h, GPU, |v| v.devices.len() == 7).await;
    assert!(!ids(&view).contains(&uuid(&h, NUMA0[0])));
    assert!(h.kubelet.resource("nvidia.com/mig-1g.10gb").is_none());
    // The labels sysfs and procfs can give are still there.
    let labels = wait_for_labels(&h, |l| l.contains_key("nvidia.com/gpu.count")).await;
    assert_eq!(
        labels.get("nvidia.com/gpu.product").map(String::as_str),
        Some("NVIDIA-H100-80GB-HBM3")
    );
    assert!(
        !labels.contains_key("nvidia.com/cuda.runtime-version.full"),
        "CUDA needs NVML"
    );
}

/// The NFD feature file's labels once `ready` holds.
async fn wait_for_labels(
    h: &Harness,
    ready: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let path = h.node.path(FEATURE_FILE);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let labels: BTreeMap<String, String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if ready(&labels) {
            return labels;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {labels:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host's own reading of the double, below any guest: the FFI binding against the
/// C ABI the double implements, profile names, NVLinks in sysfs form, events, failures.
mod host_reading {
    use super::*;
    use wasm_device_plugin::nvml::{Answer, MigMode, Nvml, NvmlConfig};

    fn reading(nvml: &Nvml) -> std::sync::Arc<wasm_device_plugin::nvml::Reading> {
        match nvml.current() {
            Answer::Current(r) => r,
            other => panic!("no reading: {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_host_reads_gpus_mig_devices_nvlinks_and_events() {
        let (h, small, _large) = dgx_with_mig().await;
        let nvml = Nvml::start(h.node.root(), &NvmlConfig::default());
        let r = reading(&nvml);
        assert_eq!(r.driver_version, "580.159.04");
        assert_eq!(r.cuda_version, (13, 0));
        assert_eq!(r.gpus.len(), 8);
        for (index, address) in NUMA0.iter().chain(NUMA1.iter()).enumerate() {
            let g = &r.gpus[index];
            let sim = h.node.gpu(address).expect("GPU");
            assert_eq!(
                (g.pci_address.as_str(), &g.uuid, g.minor),
                (*address, &sim.uuid, sim.minor)
            );
            assert_eq!(g.name, "NVIDIA H100 80GB HBM3");
            assert_eq!((g.memory_mib, g.compute_capability), (81559, (9, 0)));
            assert_eq!(g.nvlinks.len(), 18, "18 links to the NVSwitches");
            assert!(
                g.nvlinks
                    .iter()
                    .all(|l| l.remote_pci_address.starts_with("0000:e")),
                "{:?}",
                g.nvlinks
            );
        }
        assert_eq!(r.gpus[0].mig_mode, MigMode::Enabled);
        assert_eq!(r.gpus[2].mig_mode, MigMode::Disabled);
        let migs = &r.gpus[0].mig_devices;
        assert_eq!(
            migs.iter().map(|m| m.uuid.clone()).collect::<Vec<_>>(),
            small
        );
        assert!(
            migs.iter()
                .all(|m| m.profile == "1g.10gb" && m.memory_mib == 9856)
        );
        assert!(
            r.gpus[1]
                .mig_devices
                .iter()
                .all(|m| m.profile == "3g.40gb" && m.gpu_slices == 3)
        );

        let gi = h.node.mig_devices(NUMA0[0])[3].gpu_instance;
        h.node.nvml_xid(NUMA0[0], Some((gi, 0)), 94).expect("event");
        h.node.nvml_double_bit_ecc(NUMA1[3]).expect("event");
        let deadline = tokio::time::Instant::now() + WAIT;
        let events = loop {
            let batch = nvml.events().since(0);
            if batch.events.len() == 2 {
                break batch.events;
            }
            assert!(tokio::time::Instant::now() < deadline, "{:?}", batch.events);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(events[0].gpu_uuid, uuid(&h, NUMA0[0]));
        assert_eq!(
            (
                events[0].gpu_instance_id,
                events[0].compute_instance_id,
                events[0].data
            ),
            (Some(gi), Some(0), 94)
        );
        assert_eq!(events[1].gpu_uuid, uuid(&h, NUMA1[3]));
        assert_eq!(events[1].gpu_instance_id, None);
    }

    #[tokio::test]
    async fn a_driver_that_does_not_initialise_leaves_nvml_unavailable_with_the_reason() {
        let mut h = Harness::dgx().await;
        h.node.enable_nvml().expect("NVML double");
        h.node.set_nvml_init_error(Some(9)).expect("init error");
        let nvml = Nvml::start(h.node.root(), &NvmlConfig::default());
        assert!(matches!(nvml.current(), Answer::Unavailable));
        let reason = nvml.unavailable_reason().expect("a reason");
        assert!(
            reason.contains("nvmlInit_v2") && reason.contains("9"),
            "{reason}"
        );
        // No library at all.
        let empty = Harness::empty().await;
        let nvml = Nvml::start(empty.node.root(), &NvmlConfig::default());
        assert!(
            nvml.unavailable_reason()
                .expect("a reason")
                .contains("no libnvidia-ml.so.1")
        );
    }

    #[tokio::test]
    async fn a_hung_nvml_turns_the_reading_stale_not_the_callers_slow() {
        let mut h = Harness::dgx().await;
        h.node.enable_nvml().expect("NVML double");
        let config = NvmlConfig {
            refresh: Duration::from_millis(50),
            stale_after: Duration::from_millis(300),
            ..NvmlConfig::default()
        };
        let nvml = Nvml::start(h.node.root(), &config);
        reading(&nvml);
        h.node.set_nvml_hang(true).expect("hang");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let started = std::time::Instant::now();
            let answer = nvml.current();
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "current() waited on NVML"
            );
            if let Answer::Failed(reason) = answer {
                assert!(reason.contains("has not answered"), "{reason}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reported stale"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.node.set_nvml_hang(false).expect("unhang");
        let deadline = tokio::time::Instant::now() + WAIT;
        while !matches!(nvml.current(), Answer::Current(_)) {
            assert!(tokio::time::Instant::now() < deadline, "never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
