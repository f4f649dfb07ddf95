//! The NVIDIA reference guest on the simulated DGX H100 and the mixed L40S + A100 node:
//! what the kubelet is offered (devices, health, topology, options), what Allocate hands
//! out under each device-list strategy (env, volume mounts, device specs, CDI), how node
//! changes (device nodes, driver binding, exclusion, MIG) reach the kubelet, the reset
//! before a container starts, and its configuration. Health signals are in
//! `nvidia_health.rs`, sharing and preferred allocation in `nvidia_sharing.rs`.

mod nvidia_support;

use std::collections::BTreeSet;

use integration_tests::view::*;
use integration_tests::{Harness, WAIT};
use kubelet_api::v1beta1 as pb;
use nvidia_support as nv;
use testkit::SimGpu;
use tonic::Code;

const GPU: &str = "nvidia.com/gpu";
/// Driver-wide nodes the DGX fixture has and every allocation carries.
const CONTROL_NODES: [&str; 4] = [
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];

/// A DGX H100 node serving the NVIDIA guest (with `config`, if any) once the kubelet
/// sees `resource` with its 8 GPUs.
async fn serving(config: Option<&str>, resource: &str) -> Harness {
    let mut h = Harness::dgx().await;
    h.add_guest_with_policy(
        "nvidia-gpu",
        testkit::guests::NVIDIA_GPU_WASM,
        config,
        Some(testkit::guests::NVIDIA_GPU_POLICY),
    );
    h.start_host().await;
    wait_until(&h, resource, |v| v.devices.len() == 8).await;
    h
}

/// Host paths of a container's device specs, checking each is `rw` at the same path inside.
fn device_paths(container: &pb::ContainerAllocateResponse) -> BTreeSet<String> {
    for spec in &container.devices {
        assert_eq!(spec.permissions, "rw", "{spec:?}");
        assert_eq!(spec.container_path, spec.host_path, "{spec:?}");
    }
    let paths: BTreeSet<String> = container
        .devices
        .iter()
        .map(|d| d.host_path.clone())
        .collect();
    assert_eq!(
        paths.len(),
        container.devices.len(),
        "no path twice: {container:?}"
    );
    paths
}

/// The device nodes expected for `gpus` plus the control nodes given.
fn expected_paths(gpus: &[&SimGpu], control: &[&str]) -> BTreeSet<String> {
    gpus.iter()
        .map(|g| g.dev_node())
        .chain(control.iter().map(|c| c.to_string()))
        .collect()
}

fn visible_devices(container: &pb::ContainerAllocateResponse) -> Option<&str> {
    container
        .envs
        .get("NVIDIA_VISIBLE_DEVICES")
        .map(String::as_str)
}

/// The eight GPUs (not the NVSwitches) are offered by UUID, healthy, with their NUMA node; preferred allocation is advertised, pre-start (reset) is not by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_eight_healthy_gpus_with_uuids_and_numa_topology() {
    let h = serving(None, GPU).await;
    let view = h.kubelet.resource(GPU).expect("view");
    let uuids: BTreeSet<String> = h.node.gpus().iter().map(|g| g.uuid.clone()).collect();
    assert_eq!(h.node.gpus().len(), 8);
    assert_eq!(
        ids(&view),
        uuids,
        "exactly the GPUs, by UUID; NVSwitches are not offered"
    );
    for gpu in h.node.gpus() {
        let d = device(&view, &gpu.uuid).expect("listed");
        assert_eq!(d.health, pb::HEALTHY, "{d:?}");
        assert_eq!(numa_nodes(d), [i64::from(gpu.numa_node)], "{d:?}");
    }
    assert_eq!((view.capacity(), view.allocatable()), (8, 8));

    let registrations = h.kubelet.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    let registration = &registrations[0];
    assert_eq!(registration.request.resource_name, GPU);
    assert!(registration.error.is_none(), "{registration:?}");
    let options = pb::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    };
    assert_eq!(
        registration.request.options,
        Some(options),
        "RegisterRequest.options"
    );
    assert_eq!(
        registration.options,
        Some(options),
        "GetDevicePluginOptions during Register"
    );
    let asked = h
        .kubelet
        .client(GPU)
        .expect("client")
        .get_device_plugin_options(pb::Empty {})
        .await
        .expect("options");
    assert_eq!(asked.into_inner(), options, "GetDevicePluginOptions later");
}

/// Allocate hands out exactly the requested GPUs' nodes (by minor) plus the control nodes, and their UUIDs in request order, per container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_hands_out_the_gpus_nodes_control_nodes_and_visible_devices() {
    let h = serving(None, GPU).await;
    let gpus = h.node.gpus();
    // Address order and minor order differ: gpus[0] is /dev/nvidia2, gpus[2] is /dev/nvidia0.
    let (a, b) = (&gpus[0], &gpus[2]);
    assert!(a.minor > b.minor, "fixture: minors not in address order");

    let answer = allocate(&h, GPU, &[&[&a.uuid, &b.uuid]])
        .await
        .expect("allocate two GPUs");
    assert_eq!(answer.container_responses.len(), 1);
    let container = &answer.container_responses[0];
    assert_eq!(
        device_paths(container),
        expected_paths(&[a, b], &CONTROL_NODES)
    );
    assert_eq!(
        visible_devices(container),
        Some(format!("{},{}", a.uuid, b.uuid).as_str())
    );

    // Request order is kept in the variable: the other way round, the other order.
    let answer = allocate(&h, GPU, &[&[&b.uuid, &a.uuid]])
        .await
        .expect("allocate reversed");
    assert_eq!(
        visible_devices(&answer.container_responses[0]),
        Some(format!("{},{}", b.uuid, a.uuid).as_str())
    );

    // Two containers: two answers, in order, each with only its own GPU.
    let answer = allocate(&h, GPU, &[&[&a.uuid], &[&b.uuid]])
        .await
        .expect("allocate two containers");
    assert_eq!(answer.container_responses.len(), 2);
    for (container, gpu) in answer.container_responses.iter().zip([a, b]) {
        assert_eq!(
            device_paths(container),
            expected_paths(&[gpu], &CONTROL_NODES)
        );
        assert_eq!(visible_devices(container), Some(gpu.uuid.as_str()));
    }
}

/// A control node missing from the node (nvidia-modeset not loaded) is left out of allocations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_control_node_is_not_handed_out() {
    let h = serving(None, GPU).await;
    h.node
        .remove_dev_node("/dev/nvidia-modeset")
        .expect("remove node");
    let gpu = &h.node.gpus()[3];
    let answer = allocate(&h, GPU, &[&[&gpu.uuid]]).await.expect("allocate");
    assert_eq!(
        device_paths(&answer.container_responses[0]),
        expected_paths(
            &[gpu],
            &["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
        )
    );
}

/// A GPU whose device node vanishes turns Unhealthy (listed, not allocatable, refused by Allocate) and recovers when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_without_its_device_node_is_unhealthy_until_it_returns() {
    let h = serving(None, GPU).await;
    let gpu = &h.node.gpus()[4];
    h.node
        .remove_dev_node(&gpu.dev_node())
        .expect("remove node");
    let view = wait_until(&h, GPU, |v| {
        device(v, &gpu.uuid).is_some_and(|d| d.health == pb::UNHEALTHY)
    })
    .await;
    assert_eq!((view.capacity(), view.allocatable()), (8, 7), "{view:?}");
    assert!(
        view.devices
            .iter()
            .filter(|d| d.id != gpu.uuid)
            .all(|d| d.health == pb::HEALTHY),
        "{view:?}"
    );

    let status = allocate(&h, GPU, &[&[&gpu.uuid]])
        .await
        .expect_err("an unhealthy GPU is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("unhealthy") && status.message().contains(&gpu.uuid),
        "{status:?}"
    );

    h.node.add_dev_node(&gpu.dev_node()).expect("node back");
    let view = wait_until(&h, GPU, |v| v.allocatable() == 8).await;
    assert_eq!(
        device(&view, &gpu.uuid).map(|d| d.health.as_str()),
        Some(pb::HEALTHY)
    );
    let answer = allocate(&h, GPU, &[&[&gpu.uuid]])
        .await
        .expect("allocatable again");
    assert!(device_paths(&answer.container_responses[0]).contains(&gpu.dev_node()));
}

/// A GPU unbound from the nvidia driver, or excluded by it, disappears from the device list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_and_excluded_gpus_are_no_longer_offered() {
    let h = serving(None, GPU).await;
    let (unbound, excluded) = (&h.node.gpus()[1], &h.node.gpus()[6]);

    h.node.unbind_gpu_driver(&unbound.address).expect("unbind");
    let view = wait_until(&h, GPU, |v| v.devices.len() == 7).await;
    assert!(device(&view, &unbound.uuid).is_none(), "{view:?}");
    assert!(
        view.devices.iter().all(|d| d.health == pb::HEALTHY),
        "{view:?}"
    );

    h.node
        .set_gpu_excluded(&excluded.address, true)
        .expect("exclude");
    let view = wait_until(&h, GPU, |v| v.devices.len() == 6).await;
    let expected: BTreeSet<String> = h
        .node
        .gpus()
        .iter()
        .filter(|g| g.address != unbound.address && g.address != excluded.address)
        .map(|g| g.uuid.clone())
        .collect();
    assert_eq!(ids(&view), expected);
    assert_eq!((view.capacity(), view.allocatable()), (6, 6));
}

/// With `deviceIdStrategy: index` the IDs are the minors, and allocation still names GPUs by UUID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_strategy_offers_minors_as_ids() {
    let h = serving(Some(r#"{"deviceIdStrategy":"index"}"#), GPU).await;
    let view = h.kubelet.resource(GPU).expect("view");
    let minors: BTreeSet<String> = (0..8).map(|m: u32| m.to_string()).collect();
    assert_eq!(ids(&view), minors);
    for gpu in h.node.gpus() {
        let d = device(&view, &gpu.minor.to_string()).expect("listed");
        assert_eq!(numa_nodes(d), [i64::from(gpu.numa_node)], "{d:?}");
    }

    let gpu = h
        .node
        .gpus()
        .iter()
        .find(|g| g.minor == 0)
        .expect("minor 0");
    let answer = allocate(&h, GPU, &[&["0"]])
        .await
        .expect("allocate index 0");
    let container = &answer.container_responses[0];
    assert_eq!(
        device_paths(container),
        expected_paths(&[gpu], &CONTROL_NODES)
    );
    assert_eq!(visible_devices(container), Some(gpu.uuid.as_str()));
}

/// `resourceName` renames the advertised resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_name_is_configurable() {
    let h = serving(
        Some(r#"{"resourceName":"nvidia.com/h100"}"#),
        "nvidia.com/h100",
    )
    .await;
    let names: Vec<String> = h
        .kubelet
        .registrations()
        .into_iter()
        .map(|r| r.request.resource_name)
        .collect();
    assert_eq!(names, ["nvidia.com/h100"]);
    let gpu = &h.node.gpus()[0];
    let answer = allocate(&h, "nvidia.com/h100", &[&[&gpu.uuid]])
        .await
        .expect("allocate");
    assert_eq!(
        visible_devices(&answer.container_responses[0]),
        Some(gpu.uuid.as_str())
    );
}

/// An unknown configuration field keeps the guest from starting, with an invalid-config reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_field_skips_the_guest() {
    let mut h = Harness::dgx().await;
    h.add_guest(
        "nvidia-gpu",
        testkit::guests::NVIDIA_GPU_WASM,
        Some(r#"{"passDeviceSpecs":true}"#),
    );
    h.start_host().await;
    let skipped = h.host().skipped();
    assert_eq!(skipped.len(), 1, "{skipped:#?}");
    assert!(skipped[0].path.ends_with("nvidia-gpu.wasm"), "{skipped:#?}");
    for fragment in [
        "nvidia-gpu.wasm",
        "configure",
        "invalid config",
        "passDeviceSpecs",
    ] {
        assert!(
            skipped[0].reason.contains(fragment),
            "{fragment:?} not in {:?}",
            skipped[0].reason
        );
    }
    assert!(h.host().resources().is_empty());
    assert!(
        h.kubelet.registrations().is_empty(),
        "{:?}",
        h.kubelet.registrations()
    );
}

/// Allocate of an ID that is not a GPU on the node is refused with InvalidArgument naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_of_an_unknown_id_is_invalid_argument() {
    let h = serving(None, GPU).await;
    let known = &h.node.gpus()[0].uuid;
    let status = allocate(
        &h,
        GPU,
        &[&[known, "GPU-00000000-0000-0000-0000-000000000000"]],
    )
    .await
    .expect_err("unknown ID refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("GPU-00000000-0000-0000-0000-000000000000"),
        "{status:?}"
    );
}

/// The mixed node offers its L40S and A100 GPUs with their NUMA nodes, but not the GPU the driver excludes nor the A100's SR-IOV virtual function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_node_offers_l40s_and_a100_but_not_the_excluded_gpu_or_the_vf() {
    let h = nv::mixed_serving(None, GPU, nv::MIXED_OFFERED).await;
    let view = h.kubelet.resource(GPU).expect("view");
    let expected: BTreeSet<String> = h
        .node
        .gpus()
        .iter()
        .filter(|g| g.address != "0000:b0:00.0")
        .map(|g| g.uuid.clone())
        .collect();
    assert_eq!(ids(&view), expected);
    let models: BTreeSet<&str> = h.node.gpus().iter().map(|g| g.model.as_str()).collect();
    assert_eq!(
        models,
        BTreeSet::from(["NVIDIA A100 80GB PCIe", "NVIDIA L40S"])
    );
    for gpu in h.node.gpus().iter().filter(|g| g.address != "0000:b0:00.0") {
        let d = device(&view, &gpu.uuid).expect("listed");
        assert_eq!(d.health, pb::HEALTHY, "{d:?}");
        assert_eq!(numa_nodes(d), [i64::from(gpu.numa_node)], "{d:?}");
    }
}

/// `device-specs` alone hands out the device nodes and sets NVIDIA_VISIBLE_DEVICES=void, so an image's own value cannot add GPUs through the runtime hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_specs_strategy_sets_visible_devices_to_void() {
    let h = serving(Some(r#"{"deviceListStrategy":["device-specs"]}"#), GPU).await;
    let gpu = &h.node.gpus()[5];
    let answer = allocate(&h, GPU, &[&[&gpu.uuid]]).await.expect("allocate");
    let container = &answer.container_responses[0];
    assert_eq!(
        device_paths(container),
        expected_paths(&[gpu], &CONTROL_NODES)
    );
    assert_eq!(visible_devices(container), Some("void"));
    assert!(container.mounts.is_empty() && container.cdi_devices.is_empty());
}

/// `envvar` alone names the GPUs in NVIDIA_VISIBLE_DEVICES and passes no device nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envvar_strategy_names_uuids_without_device_nodes() {
    let h = serving(Some(r#"{"deviceListStrategy":["envvar"]}"#), GPU).await;
    let (a, b) = (&h.node.gpus()[1], &h.node.gpus()[7]);
    let answer = allocate(&h, GPU, &[&[&a.uuid, &b.uuid]])
        .await
        .expect("allocate");
    let container = &answer.container_responses[0];
    assert_eq!(
        visible_devices(container),
        Some(format!("{},{}", a.uuid, b.uuid).as_str())
    );
    assert!(container.devices.is_empty() && container.cdi_devices.is_empty());
}

/// `volume-mounts` points NVIDIA_VISIBLE_DEVICES at /var/run/nvidia-container-devices and mounts /dev/null there once per GPU (the runtime's fail-closed mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_mounts_strategy_mounts_dev_null_per_gpu() {
    let h = nv::mixed_serving(
        Some(r#"{"deviceListStrategy":["volume-mounts","device-specs"]}"#),
        GPU,
        nv::MIXED_OFFERED,
    )
    .await;
    let (a, c) = (nv::uuid(&h, "0000:1a:00.0"), nv::uuid(&h, "0000:3b:00.0"));
    let answer = nv::allocate(&h, GPU, &[&[&a, &c]]).await.expect("allocate");
    let container = &answer.container_responses[0];
    assert_eq!(
        visible_devices(container),
        Some("/var/run/nvidia-container-devices")
    );
    let mounts: Vec<(&str, &str, bool)> = container
        .mounts
        .iter()
        .map(|m| (m.host_path.as_str(), m.container_path.as_str(), m.read_only))
        .collect();
    let (ma, mc) = (
        format!("/var/run/nvidia-container-devices/{a}"),
        format!("/var/run/nvidia-container-devices/{c}"),
    );
    assert_eq!(
        mounts,
        [
            ("/dev/null", ma.as_str(), true),
            ("/dev/null", mc.as_str(), true)
        ]
    );
    assert!(nv::device_paths(container).contains("/dev/nvidia1"));
}

/// `cdi-cri` writes the CDI spec (through the host, under the granted kind) before answering with the qualified names, and sets NVIDIA_VISIBLE_DEVICES=void.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_strategy_writes_the_spec_before_answering_with_qualified_names() {
    let h = nv::mixed_serving(
        Some(r#"{"deviceListStrategy":["cdi-cri"]}"#),
        GPU,
        nv::MIXED_OFFERED,
    )
    .await;
    let spec_path = h
        .node
        .path("/var/run/cdi/k8s.device-plugin.nvidia.com+gpu.json");
    assert!(!spec_path.exists(), "no spec before the first allocation");
    let (a, d) = (nv::uuid(&h, "0000:1a:00.0"), nv::uuid(&h, "0000:88:00.0"));
    let answer = nv::allocate(&h, GPU, &[&[&d, &a], &[&a]])
        .await
        .expect("allocate");
    let names = |i: usize| -> Vec<String> {
        answer.container_responses[i]
            .cdi_devices
            .iter()
            .map(|d| d.name.clone())
            .collect()
    };
    let qualified = |u: &str| format!("k8s.device-plugin.nvidia.com/gpu={u}");
    assert_eq!(names(0), [qualified(&d), qualified(&a)]);
    assert_eq!(names(1), [qualified(&a)]);
    for container in &answer.container_responses {
        assert_eq!(visible_devices(container), Some("void"));
        assert!(container.devices.is_empty() && container.mounts.is_empty());
    }
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&spec_path).expect("spec written"))
            .expect("spec is JSON");
    assert_eq!(spec["kind"], "k8s.device-plugin.nvidia.com/gpu");
    let devices = spec["devices"].as_array().expect("devices");
    assert_eq!(
        devices.len(),
        nv::MIXED_OFFERED,
        "every offered GPU: {spec}"
    );
    let a_device = devices
        .iter()
        .find(|d| d["name"] == a.as_str())
        .expect("device for a");
    assert_eq!(
        a_device["containerEdits"]["deviceNodes"][0]["path"],
        "/dev/nvidia1"
    );
    let control: Vec<&str> = spec["containerEdits"]["deviceNodes"]
        .as_array()
        .expect("control nodes")
        .iter()
        .filter_map(|n| n["path"].as_str())
        .collect();
    assert_eq!(control, CONTROL_NODES);
}

/// A CDI kind the policy does not grant makes Allocate fail with the host's refusal, and no spec is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_spec_of_an_ungranted_kind_is_refused() {
    let h = nv::mixed_serving(
        Some(r#"{"deviceListStrategy":["cdi-cri"],"cdiKind":"nvidia.com/gpu"}"#),
        GPU,
        nv::MIXED_OFFERED,
    )
    .await;
    let a = nv::uuid(&h, "0000:1a:00.0");
    let status = nv::allocate(&h, GPU, &[&[&a]])
        .await
        .expect_err("kind not granted");
    assert!(
        status.message().contains("nvidia.com/gpu")
            && status.message().contains("not among the policy's cdiKinds"),
        "{status:?}"
    );
    assert!(!h.node.path("/var/run/cdi/nvidia.com+gpu.json").exists());
}

/// The documented example configuration loads: per-GPU replica counts, a rename and `.shared`, next to the whole GPUs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_loads() {
    let example = include_str!("../guests/nvidia-gpu/example-config.json");
    let h = nv::mixed_serving(Some(example), GPU, 2).await;
    let whole = nv::ids(&h.kubelet.resource(GPU).expect("view"));
    let expected: BTreeSet<String> = ["0000:88:00.0", "0000:89:00.0"]
        .iter()
        .map(|a| nv::uuid(&h, a))
        .collect();
    assert_eq!(whole, expected);
    let shared = nv::wait_until(&h, "nvidia.com/gpu.shared", |v| v.devices.len() == 8).await;
    let a = nv::uuid(&h, "0000:1a:00.0");
    assert!(nv::ids(&shared).contains(&format!("{a}::3")));
    let half = nv::wait_until(&h, "nvidia.com/gpu.half", |v| v.devices.len() == 2).await;
    let c = nv::uuid(&h, "0000:3b:00.0");
    assert_eq!(
        nv::ids(&half),
        BTreeSet::from([format!("{c}::0"), format!("{c}::1")])
    );
}

/// An invalid value keeps the guest from starting, and the reason names the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_value_names_the_field() {
    let mut h = Harness::dgx().await;
    h.add_guest_with_policy(
        "nvidia-gpu",
        testkit::guests::NVIDIA_GPU_WASM,
        Some(r#"{"sharing":{"timeSlicing":{"resources":[{"replicas":"four"}]}}}"#),
        Some(testkit::guests::NVIDIA_GPU_POLICY),
    );
    h.start_host().await;
    let skipped = h.host().skipped();
    assert_eq!(skipped.len(), 1, "{skipped:#?}");
    assert!(
        skipped[0]
            .reason
            .contains("sharing.timeSlicing.resources[0].replicas"),
        "{:?}",
        skipped[0].reason
    );
}

/// A GPU partitioned into MIG instances is not offered whole; it returns when its instances are destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_partitioned_gpu_is_not_offered_whole() {
    let h = nv::mixed_serving(None, GPU, nv::MIXED_OFFERED).await;
    let d = "0000:88:00.0";
    h.node.add_mig_instance(d, 1, 0).expect("MIG instance");
    let view = nv::wait_until(&h, GPU, |v| v.devices.len() == nv::MIXED_OFFERED - 1).await;
    assert!(!nv::ids(&view).contains(&nv::uuid(&h, d)));
    h.node.remove_mig_instances(d).expect("destroy instances");
    let view = nv::wait_until(&h, GPU, |v| v.devices.len() == nv::MIXED_OFFERED).await;
    assert!(nv::is_healthy(&view, &nv::uuid(&h, d)));
}

/// With reset enabled and the write granted, pre-start is advertised and writes 1 to each whole GPU's `reset` attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_start_resets_the_containers_gpus_when_enabled_and_granted() {
    let policy = nv::policy_with(serde_json::json!({
        "write": ["/sys/bus/pci/devices/*/reset"]
    }));
    let h = nv::serve(
        nv::mixed().await,
        Some(r#"{"reset":{"enabled":true,"timeoutMs":2000}}"#),
        &policy,
    )
    .await;
    nv::wait_until(&h, GPU, |v| v.devices.len() == nv::MIXED_OFFERED).await;
    let options = h.kubelet.registrations()[0].request.options;
    assert_eq!(
        options,
        Some(pb::DevicePluginOptions {
            pre_start_required: true,
            get_preferred_allocation_available: true,
        })
    );
    let (a, c) = ("0000:1a:00.0", "0000:3b:00.0");
    tokio::time::timeout(
        WAIT,
        h.kubelet
            .pre_start(GPU, vec![nv::uuid(&h, a), nv::uuid(&h, c)]),
    )
    .await
    .expect("pre-start returns")
    .expect("pre-start succeeds");
    for address in [a, c] {
        assert_eq!(h.node.gpu_reset_writes(address).expect("reset file"), "1");
    }
    assert_eq!(
        h.node.gpu_reset_writes("0000:1b:00.0").expect("reset file"),
        ""
    );
}

/// Reset enabled under the shipped policy (which grants no writes): pre-start fails and says which grant is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_without_the_write_grant_fails_clearly() {
    let h = nv::serve(
        nv::mixed().await,
        Some(r#"{"reset":{"enabled":true}}"#),
        testkit::guests::NVIDIA_GPU_POLICY,
    )
    .await;
    nv::wait_until(&h, GPU, |v| v.devices.len() == nv::MIXED_OFFERED).await;
    let a = "0000:1a:00.0";
    let status = h
        .kubelet
        .pre_start(GPU, vec![nv::uuid(&h, a)])
        .await
        .expect_err("no write grant");
    let m = status.message();
    assert!(m.contains("reset") && m.contains("write"), "{status:?}");
    assert_eq!(h.node.gpu_reset_writes(a).expect("reset file"), "");
}

/// A GPU that does not answer after its reset (config space reads 0xffff) fails pre-start after the bounded wait, naming the GPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_of_a_gpu_that_does_not_come_back_fails_after_the_bounded_wait() {
    let policy = nv::policy_with(serde_json::json!({
        "write": ["/sys/bus/pci/devices/*/reset"]
    }));
    let h = nv::serve(
        nv::mixed().await,
        Some(r#"{"reset":{"enabled":true,"timeoutMs":300}}"#),
        &policy,
    )
    .await;
    nv::wait_until(&h, GPU, |v| v.devices.len() == nv::MIXED_OFFERED).await;
    let a = "0000:1a:00.0";
    let uuid = nv::uuid(&h, a);
    h.node.set_gpu_fallen_off_bus(a).expect("fall off the bus");
    nv::wait_until(&h, GPU, |v| nv::is_unhealthy(v, &uuid)).await;
    let started = std::time::Instant::now();
    let status = h
        .kubelet
        .pre_start(GPU, vec![uuid.clone()])
        .await
        .expect_err("the GPU does not come back");
    let waited = started.elapsed();
    let m = status.message();
    assert!(
        m.contains(&uuid) && m.contains("did not answer within 300 ms") && m.contains("0xffff"),
        "{status:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(300) && waited < WAIT,
        "{waited:?}"
    );
    assert_eq!(h.node.gpu_reset_writes(a).expect("reset file"), "1");
}

/// Replicas of a shared GPU are never reset (other containers use the GPU); the shared-only resource does not even ask for pre-start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_gpus_are_not_reset() {
    let policy = nv::policy_with(serde_json::json!({
        "write": ["/sys/bus/pci/devices/*/reset"]
    }));
    let config = r#"{"reset":{"enabled":true},"sharing":{"timeSlicing":{"resources":[
        {"devices":["0000:1a:00.0"],"replicas":2},
        {"devices":["0000:1b:00.0"],"replicas":2,"rename":"nvidia.com/l40s.shared"}]}}}"#;
    let h = nv::serve(nv::mixed().await, Some(config), &policy).await;
    nv::wait_until(&h, GPU, |v| v.devices.len() == 3 + 2).await;
    nv::wait_until(&h, "nvidia.com/l40s.shared", |v| v.devices.len() == 2).await;
    let options = |name: &str| {
        h.kubelet
            .registrations()
            .into_iter()
            .find(|r| r.request.resource_name == name)
            .and_then(|r| r.request.options)
            .map(|o| o.pre_start_required)
    };
    assert_eq!(options(GPU), Some(true));
    assert_eq!(options("nvidia.com/l40s.shared"), Some(false));
    let a = "0000:1a:00.0";
    h.kubelet
        .pre_start(GPU, vec![format!("{}::1", nv::uuid(&h, a))])
        .await
        .expect("pre-start of a replica");
    assert_eq!(h.node.gpu_reset_writes(a).expect("reset file"), "");
}

/// The release guest, stripped, is at most 190 KiB so that a ConfigMap carrying it (base64 adds a third) still fits `kubectl apply`'s 256 KiB last-applied annotation; the size is printed.
#[test]
fn release_guest_fits_a_configmap() {
    const LIMIT: usize = 190 * 1024;
    let size = testkit::guests::NVIDIA_GPU_WASM.len();
    eprintln!("nvidia-gpu release guest: {size} bytes of at most {LIMIT}");
    assert!(
        size <= LIMIT,
        "nvidia-gpu guest is {size} bytes, over {LIMIT}"
    );
}
