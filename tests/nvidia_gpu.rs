//! The NVIDIA reference guest on the simulated DGX H100: what the kubelet is offered
//! (devices, health, topology, options), what Allocate hands out, how node changes
//! (device nodes, driver binding, exclusion) reach the kubelet, and its configuration.

use std::collections::BTreeSet;

use integration_tests::{Harness, WAIT};
use kubelet_api::v1beta1 as pb;
use testkit::SimGpu;
use testkit::kubelet::ResourceView;
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

/// Waits until the kubelet's open stream for `resource` satisfies `check`.
async fn wait_until(
    h: &Harness,
    resource: &str,
    check: impl Fn(&ResourceView) -> bool,
) -> ResourceView {
    h.kubelet
        .wait_for(resource, WAIT, |v| v.connected && check(v))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ids(view: &ResourceView) -> BTreeSet<String> {
    view.devices.iter().map(|d| d.id.clone()).collect()
}

fn device<'a>(view: &'a ResourceView, id: &str) -> Option<&'a pb::Device> {
    view.devices.iter().find(|d| d.id == id)
}

fn numa_nodes(device: &pb::Device) -> Vec<i64> {
    device
        .topology
        .as_ref()
        .map(|t| t.nodes.iter().map(|n| n.id).collect())
        .unwrap_or_default()
}

/// `Allocate` with one entry per container, finishing within [`WAIT`].
async fn allocate(
    h: &Harness,
    resource: &str,
    containers: &[&[&str]],
) -> Result<pb::AllocateResponse, tonic::Status> {
    let containers = containers
        .iter()
        .map(|ids| ids.iter().map(|s| s.to_string()).collect())
        .collect();
    tokio::time::timeout(WAIT, h.kubelet.allocate(resource, containers))
        .await
        .expect("Allocate returns")
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

/// The eight GPUs (not the NVSwitches) are offered by UUID, healthy, with their NUMA node, and no optional calls are advertised.
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
    let none = pb::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    };
    assert_eq!(
        registration.request.options,
        Some(none),
        "RegisterRequest.options"
    );
    assert_eq!(
        registration.options,
        Some(none),
        "GetDevicePluginOptions during Register"
    );
    let asked = h
        .kubelet
        .client(GPU)
        .expect("client")
        .get_device_plugin_options(pb::Empty {})
        .await
        .expect("options");
    assert_eq!(asked.into_inner(), none, "GetDevicePluginOptions later");
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
        Some(r#"{"migStrategy":"none"}"#),
    );
    h.start_host().await;
    let skipped = h.host().skipped();
    assert_eq!(skipped.len(), 1, "{skipped:#?}");
    assert!(skipped[0].path.ends_with("nvidia-gpu.wasm"), "{skipped:#?}");
    for fragment in [
        "nvidia-gpu.wasm",
        "configure",
        "invalid config",
        "migStrategy",
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
