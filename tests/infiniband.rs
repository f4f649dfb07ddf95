//! The InfiniBand / RDMA reference guest on the simulated DGX H100 (8 ConnectX-7 HCAs on
//! InfiniBand) and its variants (a ConnectX-6 Dx on RoCE, links going down, character
//! devices not numbered like `mlx5_N`, no `issm` nodes): what the kubelet is offered in
//! shared and exclusive pools, what Allocate hands out (and never hands out), health,
//! topology and the preferred allocation, and the configuration.

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::Harness;
use integration_tests::view::*;
use kubelet_api::v1beta1 as pb;
use prost::Message;
use serde_json::{Value, json};
use testkit::{RocePorts, SimNic, SimNode};
use tonic::Code;
use wasm_device_plugin::node::Node;

const RDMA_CM: &str = "/dev/infiniband/rdma_cm";
/// The resource of the guest's default configuration.
const DEFAULT: &str = "rdma/hca";
/// The kubelet's limit on one gRPC message, which a ListAndWatch answer must stay under.
const GRPC_LIMIT: usize = 4 << 20;

// ---- Helpers --------------------------------------------------------------------------

/// A DGX H100 node, changed by `setup`, serving the infiniband guest with `config` (none:
/// no configuration file) and its shipped policy, once the kubelet sees each
/// `(resource, device count)` of `expect`.
async fn serving(
    setup: impl FnOnce(&mut SimNode),
    config: Option<Value>,
    expect: &[(&str, usize)],
) -> Harness {
    let mut h = Harness::dgx().await;
    setup(&mut h.node);
    add_guest(&h, config);
    h.start_host().await;
    for &(resource, n) in expect {
        wait_until(&h, resource, |v| v.devices.len() == n).await;
    }
    h
}

fn add_guest(h: &Harness, config: Option<Value>) {
    h.add_guest_with_policy(
        "infiniband",
        testkit::guests::INFINIBAND_WASM,
        config.map(|c| c.to_string()).as_deref(),
        Some(testkit::guests::INFINIBAND_POLICY),
    );
}

fn unchanged(_: &mut SimNode) {}

/// Adds a ConnectX-6 Dx on RoCE, its two functions each an RDMA device, on NUMA node 0.
fn with_roce_nic(node: &mut SimNode) {
    node.add_connectx6_dx_roce(0x40, 0, RocePorts::PerFunction)
        .expect("ConnectX-6 Dx");
}

/// One pool's configuration.
fn config(pools: Value) -> Option<Value> {
    Some(json!({ "pools": pools }))
}

/// Allocates one container and returns its answer.
async fn allocate_one(h: &Harness, resource: &str, ids: &[&str]) -> pb::ContainerAllocateResponse {
    let mut answer = allocate(h, resource, &[ids])
        .await
        .unwrap_or_else(|s| panic!("allocate {ids:?} of {resource}: {s:?}"));
    assert_eq!(answer.container_responses.len(), 1);
    answer.container_responses.remove(0)
}

/// Host paths of a container's device specs, checking each is `rw` at the same path
/// inside and appears once.
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
    assert_eq!(paths.len(), container.devices.len(), "{container:?}");
    paths
}

/// Every node of `nics` plus `rdma_cm`.
fn expected_paths(nics: &[&SimNic]) -> BTreeSet<String> {
    nics.iter()
        .flat_map(|n| n.all_dev_nodes())
        .chain([RDMA_CM.to_string()])
        .collect()
}

/// The PCI addresses a container was given, from `PCIDEVICE_<resource>`.
fn given(container: &pb::ContainerAllocateResponse, env: &str) -> BTreeSet<String> {
    container
        .envs
        .get(env)
        .unwrap_or_else(|| panic!("no {env} in {:?}", container.envs))
        .split(',')
        .map(String::from)
        .collect()
}

/// The JSON of `<env>_INFO`.
fn info(container: &pb::ContainerAllocateResponse, env: &str) -> Value {
    let key = format!("{env}_INFO");
    let text = container
        .envs
        .get(&key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", container.envs));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {text}"))
}

fn addresses<'a>(nics: impl IntoIterator<Item = &'a SimNic>) -> BTreeSet<String> {
    nics.into_iter().map(|n| n.address.clone()).collect()
}

fn registered_options(h: &Harness, resource: &str) -> Option<pb::DevicePluginOptions> {
    h.kubelet
        .registrations()
        .into_iter()
        .find(|r| r.request.resource_name == resource && r.error.is_none())
        .and_then(|r| r.request.options)
}

// ---- Exclusive pools ------------------------------------------------------------------

/// Without a configuration the guest offers every Mellanox HCA as one exclusive device
/// named by its PCI address, healthy, with its NUMA node, and advertises preferred
/// allocation (and no pre-start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pool_offers_each_hca_by_pci_address_with_numa_topology() {
    let h = serving(unchanged, None, &[(DEFAULT, 8)]).await;
    let view = h.kubelet.resource(DEFAULT).expect("view");
    assert_eq!(ids(&view), addresses(h.node.nics()));
    for nic in h.node.nics() {
        let d = device(&view, &nic.address).expect("listed");
        assert_eq!(d.health, pb::HEALTHY, "{d:?}");
        assert_eq!(numa_nodes(d), [i64::from(nic.numa_node)], "{d:?}");
    }
    assert_eq!((view.capacity(), view.allocatable()), (8, 8));
    assert_eq!(
        registered_options(&h, DEFAULT),
        Some(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        })
    );
}

/// Exclusive allocation is fail-closed: a container gets exactly the uverbs, umad and
/// issm nodes of the HCAs behind its IDs plus rdma_cm, never another HCA's, and the info
/// variable describes exactly those HCAs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_allocation_gives_only_the_hcas_behind_the_ids() {
    let h = serving(unchanged, None, &[(DEFAULT, 8)]).await;
    let nics = h.node.nics();
    let (a, b) = (&nics[2], &nics[6]);

    let container = allocate_one(&h, DEFAULT, &[&a.address]).await;
    assert_eq!(device_paths(&container), expected_paths(&[a]));
    for other in nics.iter().filter(|n| n.address != a.address) {
        for path in other.all_dev_nodes() {
            assert!(
                !device_paths(&container).contains(&path),
                "{path} of {} leaked",
                other.ib_device
            );
        }
    }
    assert!(container.mounts.is_empty() && container.cdi_devices.is_empty());
    let env = "PCIDEVICE_RDMA_HCA";
    assert_eq!(given(&container, env), addresses([a]));
    let info = info(&container, env);
    assert_eq!(info.as_object().map(|o| o.len()), Some(1), "{info}");
    let about = &info[&a.address];
    assert_eq!(about["generic"]["deviceID"], a.address.as_str());
    assert_eq!(about["rdma"]["rdma_dev"], a.ib_device.as_str());
    assert_eq!(about["rdma"]["uverbs"], a.uverbs_node().as_str());
    assert_eq!(about["rdma"]["umad"], a.dev_nodes()[1].as_str());
    assert_eq!(about["rdma"]["issm"], a.dev_nodes()[2].as_str());
    assert_eq!(about["rdma"]["rdma_cm"], RDMA_CM);
    assert_eq!(about["rdma"]["ports"], "1");
    assert_eq!(about["rdma"]["link_layer"], "InfiniBand");
    assert_eq!(about["net"]["interfaces"], a.netdev.as_str());
    assert_eq!(about["topology"]["numa_node"], a.numa_node.to_string());

    // Two HCAs in one container; then two containers, each with only its own.
    let container = allocate_one(&h, DEFAULT, &[&a.address, &b.address]).await;
    assert_eq!(device_paths(&container), expected_paths(&[a, b]));
    assert_eq!(given(&container, env), addresses([a, b]));
    let answer = allocate(&h, DEFAULT, &[&[&a.address], &[&b.address]])
        .await
        .expect("two containers");
    assert_eq!(answer.container_responses.len(), 2);
    for (container, nic) in answer.container_responses.iter().zip([a, b]) {
        assert_eq!(device_paths(container), expected_paths(&[nic]));
        assert_eq!(given(container, env), addresses([nic]));
    }

    // IDs that are not devices of the pool never reach the guest's answer.
    for bad in ["0000:00:00.0", "mlx5_2", "hca-0"] {
        let status = allocate(&h, DEFAULT, &[&[bad]])
            .await
            .expect_err("unknown ID refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(bad), "{status:?}");
    }
}

/// The guest checks IDs itself against a fresh look at the node: an HCA that left the
/// pool (rebound to vfio-pci, so the `drivers` selector no longer takes it) before the
/// host's next rescan is refused by the guest, naming the ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hca_that_left_the_pool_since_the_last_rescan_is_refused_by_the_guest() {
    let mut h = Harness::dgx().await;
    let pool = json!([{ "resourceName": "nvidia.com/ib", "mode": "exclusive",
                        "selectors": { "drivers": ["mlx5_core"] } }]);
    add_guest(&h, config(pool));
    let mut host_config = h.config();
    host_config.rescan_interval = Duration::from_secs(3600);
    h.host = Some(Node::start(host_config).await.expect("host starts"));
    wait_until(&h, "nvidia.com/ib", |v| v.devices.len() == 8).await;

    let nic = h.node.nics()[5].clone();
    h.node
        .bind_pci_driver(&nic.address, "vfio-pci")
        .expect("rebind");
    let view = h.kubelet.resource("nvidia.com/ib").expect("view");
    assert_eq!(
        health(&view, &nic.address),
        Some(pb::HEALTHY),
        "no rescan yet: the kubelet still sees it"
    );
    let status = allocate(&h, "nvidia.com/ib", &[&[&nic.address]])
        .await
        .expect_err("the guest refuses an HCA outside the pool");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(&nic.address) && status.message().contains("nvidia.com/ib"),
        "{status:?}"
    );
    // The others are still handed out.
    let other = &h.node.nics()[4];
    let container = allocate_one(&h, "nvidia.com/ib", &[&other.address]).await;
    assert_eq!(device_paths(&container), expected_paths(&[other]));
}

/// An HCA that an exclusive pool selects is handed out by that pool only: a shared pool
/// selecting everything gets the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_pool_keeps_its_hcas_out_of_other_pools() {
    let pools = json!([
        { "resourceName": "rdma/shared", "mode": "shared", "rdmaHcaMax": 4 },
        { "resourceName": "rdma/roce", "mode": "exclusive",
          "selectors": { "linkTypes": ["ethernet"] } },
    ]);
    let h = serving(
        with_roce_nic,
        config(pools),
        &[("rdma/shared", 4), ("rdma/roce", 2)],
    )
    .await;
    let (ib, roce): (Vec<&SimNic>, Vec<&SimNic>) = h
        .node
        .nics()
        .iter()
        .partition(|n| n.link_layer == "InfiniBand");
    let view = h.kubelet.resource("rdma/roce").expect("view");
    assert_eq!(ids(&view), addresses(roce.iter().copied()));
    let container = allocate_one(&h, "rdma/shared", &["shared-0"]).await;
    assert_eq!(
        given(&container, "PCIDEVICE_RDMA_SHARED"),
        addresses(ib.iter().copied())
    );
    assert_eq!(device_paths(&container), expected_paths(&ib));
}

// ---- Shared pools ---------------------------------------------------------------------

/// A shared pool of 1,000 slots lists every slot (`<name>-<n>`), healthy, with the NUMA
/// nodes of all its HCAs, in a ListAndWatch message far below the 4 MiB limit; any slot
/// gives the whole pool, in every container that holds one; and no preferred allocation
/// is advertised for interchangeable slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pool_of_1000_slots_lists_and_allocates_the_whole_pool() {
    let pools = json!([{ "resourceName": "rdma/hca_shared_a", "mode": "shared",
                         "rdmaHcaMax": 1000, "selectors": { "vendors": ["15b3"] } }]);
    let h = serving(unchanged, config(pools), &[("rdma/hca_shared_a", 1000)]).await;
    let view = h.kubelet.resource("rdma/hca_shared_a").expect("view");
    let expected: BTreeSet<String> = (0..1000).map(|n| format!("hca_shared_a-{n}")).collect();
    assert_eq!(ids(&view), expected);
    for d in &view.devices {
        assert_eq!(d.health, pb::HEALTHY, "{d:?}");
        assert_eq!(numa_nodes(d), [0, 1], "{d:?}");
    }
    assert_eq!(view.allocatable(), 1000);
    let message = pb::ListAndWatchResponse {
        devices: view.devices.clone(),
    };
    let size = message.encoded_len();
    println!("ListAndWatch message for 1,000 shared slots: {size} bytes");
    assert!(
        size < GRPC_LIMIT / 64,
        "{size} bytes is not well under 4 MiB"
    );
    assert_eq!(
        registered_options(&h, "rdma/hca_shared_a"),
        Some(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: false,
        })
    );

    let all: Vec<&SimNic> = h.node.nics().iter().collect();
    let env = "PCIDEVICE_RDMA_HCA_SHARED_A";
    let answer = allocate(
        &h,
        "rdma/hca_shared_a",
        &[
            &["hca_shared_a-0"],
            &["hca_shared_a-999", "hca_shared_a-500"],
        ],
    )
    .await
    .expect("allocate slots");
    assert_eq!(answer.container_responses.len(), 2);
    for container in &answer.container_responses {
        assert_eq!(device_paths(container), expected_paths(&all));
        assert_eq!(given(container, env), addresses(all.iter().copied()));
        let info = info(container, env);
        assert_eq!(info.as_object().map(|o| o.len()), Some(8), "{info}");
        for nic in &all {
            assert_eq!(
                info[&nic.address]["rdma"]["rdma_dev"],
                nic.ib_device.as_str()
            );
        }
    }
    let status = allocate(&h, "rdma/hca_shared_a", &[&["hca_shared_a-1000"]])
        .await
        .expect_err("no slot 1000");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// Every selector narrows a pool (OR within a selector, AND across selectors), shown
/// through what a slot of each pool hands out; a pool that matches nothing lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selector_narrows_the_pool() {
    // (resource, selectors, ib devices expected)
    let cases: [(&str, Value, &[&str]); 12] = [
        ("rdma/vendor", json!({ "vendors": ["15b3"] }), &["*"]),
        ("rdma/vendor_none", json!({ "vendors": ["8086"] }), &[]),
        (
            "rdma/device_cx6",
            json!({ "deviceIDs": ["101d"] }),
            &["mlx5_8", "mlx5_9"],
        ),
        (
            "rdma/device_or",
            json!({ "deviceIDs": ["0x1021", "101D"] }),
            &["*"],
        ),
        ("rdma/driver", json!({ "drivers": ["mlx5_core"] }), &["*"]),
        ("rdma/driver_none", json!({ "drivers": ["irdma"] }), &[]),
        (
            "rdma/ifnames",
            json!({ "ifNames": ["ibp25s0", "enp65s0f1np1"] }),
            &["mlx5_0", "mlx5_9"],
        ),
        (
            "rdma/link_eth",
            json!({ "linkTypes": ["ether"] }),
            &["mlx5_8", "mlx5_9"],
        ),
        (
            "rdma/link_ib",
            json!({ "linkTypes": ["infiniband"] }),
            &[
                "mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_4", "mlx5_5", "mlx5_6", "mlx5_7",
            ],
        ),
        (
            "rdma/pci",
            json!({ "pciAddresses": ["0000:19:00.0", "0000:41:00.1"] }),
            &["mlx5_0", "mlx5_9"],
        ),
        (
            "rdma/and",
            json!({ "deviceIDs": ["101d"], "ifNames": ["enp65s0f0np0", "ibp25s0"] }),
            &["mlx5_8"],
        ),
        (
            "rdma/and_none",
            json!({ "linkTypes": ["infiniband"], "pciAddresses": ["0000:41:00.0"] }),
            &[],
        ),
    ];
    let pools: Vec<Value> = cases
        .iter()
        .map(|(name, selectors, _)| {
            json!({ "resourceName": name, "mode": "shared", "rdmaHcaMax": 2,
                    "selectors": selectors })
        })
        .collect();
    let expect: Vec<(&str, usize)> = cases
        .iter()
        .map(|(name, _, hcas)| (*name, if hcas.is_empty() { 0 } else { 2 }))
        .collect();
    let h = serving(with_roce_nic, config(Value::Array(pools)), &expect).await;
    assert_eq!(h.node.nics().len(), 10);

    for (resource, _, hcas) in &cases {
        if hcas.is_empty() {
            let view = h.kubelet.resource(resource).expect("registered");
            assert!(view.devices.is_empty(), "{resource}: {view:?}");
            continue;
        }
        let expected: BTreeSet<String> = h
            .node
            .nics()
            .iter()
            .filter(|n| hcas == &["*"] || hcas.contains(&n.ib_device.as_str()))
            .map(|n| n.address.clone())
            .collect();
        let slot = format!("{}-1", resource.trim_start_matches("rdma/"));
        let container = allocate_one(&h, resource, &[&slot]).await;
        let env = format!(
            "PCIDEVICE_RDMA_{}",
            resource.trim_start_matches("rdma/").to_ascii_uppercase()
        );
        assert_eq!(given(&container, &env), expected, "{resource}");
        let nics: Vec<&SimNic> = h
            .node
            .nics()
            .iter()
            .filter(|n| expected.contains(&n.address))
            .collect();
        assert_eq!(
            device_paths(&container),
            expected_paths(&nics),
            "{resource}"
        );
    }
}

// ---- Health ---------------------------------------------------------------------------

/// A port that is not ACTIVE/LinkUp marks its exclusive device Unhealthy (the host then
/// refuses it) and every slot of a shared pool holding it; both recover when the link
/// comes back. A port stuck in INIT (no subnet manager) is unhealthy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_marks_devices_unhealthy_until_the_link_comes_back() {
    let mut h = Harness::dgx().await;
    let numa0: Vec<&str> = h.node.nics()[..4]
        .iter()
        .map(|n| n.address.as_str())
        .collect();
    let numa1: Vec<&str> = h.node.nics()[4..]
        .iter()
        .map(|n| n.address.as_str())
        .collect();
    let pools = json!([
        { "resourceName": "nvidia.com/ib", "mode": "exclusive",
          "selectors": { "pciAddresses": numa0 } },
        { "resourceName": "rdma/shared", "mode": "shared", "rdmaHcaMax": 10,
          "selectors": { "pciAddresses": numa1 } },
    ]);
    add_guest(&h, config(pools));
    h.start_host().await;
    wait_until(&h, "nvidia.com/ib", |v| v.devices.len() == 4).await;
    wait_until(&h, "rdma/shared", |v| v.devices.len() == 10).await;
    let (a, b) = (h.node.nics()[1].clone(), h.node.nics()[5].clone());

    h.node.set_link(&a.ib_device, 1, false).expect("link down");
    let view = wait_until(&h, "nvidia.com/ib", |v| v.allocatable() == 3).await;
    assert_eq!(health(&view, &a.address), Some(pb::UNHEALTHY), "{view:?}");
    assert_eq!(view.capacity(), 4);
    let status = allocate(&h, "nvidia.com/ib", &[&[&a.address]])
        .await
        .expect_err("an unhealthy HCA is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("unhealthy"), "{status:?}");

    h.node.set_link(&b.ib_device, 1, false).expect("link down");
    let view = wait_until(&h, "rdma/shared", |v| v.allocatable() == 0).await;
    assert_eq!(view.capacity(), 10);
    assert!(view.devices.iter().all(|d| d.health == pb::UNHEALTHY));

    // Physically up, but not yet configured by a subnet manager: still unhealthy.
    h.node
        .set_port_state(&a.ib_device, 1, "2: INIT", "5: LinkUp")
        .expect("init");
    h.node.set_link(&b.ib_device, 1, true).expect("link up");
    wait_until(&h, "rdma/shared", |v| v.allocatable() == 10).await;
    let view = h.kubelet.resource("nvidia.com/ib").expect("view");
    assert_eq!(health(&view, &a.address), Some(pb::UNHEALTHY));

    h.node.set_link(&a.ib_device, 1, true).expect("link up");
    let view = wait_until(&h, "nvidia.com/ib", |v| v.allocatable() == 4).await;
    assert_eq!(health(&view, &a.address), Some(pb::HEALTHY));
    let container = allocate_one(&h, "nvidia.com/ib", &[&a.address]).await;
    assert_eq!(device_paths(&container), expected_paths(&[&a]));
}

// ---- Topology -------------------------------------------------------------------------

/// GetPreferredAllocation packs: two devices come from one adapter (the ConnectX-6 Dx's
/// two functions share a root port), a request anchored on a NUMA node stays on it, and
/// every answer holds must-include and the requested size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_packs_within_a_switch_and_a_numa_node() {
    let h = serving(with_roce_nic, None, &[(DEFAULT, 10)]).await;
    let nics = h.node.nics();
    let all: Vec<String> = nics.iter().map(|n| n.address.clone()).collect();
    let numa_of = |id: &str| {
        nics.iter()
            .find(|n| n.address == id)
            .map(|n| n.numa_node)
            .expect("known")
    };
    let prefer = |available: Vec<String>, must: Vec<String>, size: i32| {
        let kubelet = &h.kubelet;
        async move {
            let answer = kubelet
                .preferred_allocation(DEFAULT, available, must, size)
                .await
                .expect("preferred allocation");
            answer.container_responses[0]
                .device_i_ds
                .iter()
                .cloned()
                .collect::<BTreeSet<String>>()
        }
    };
    let roce: BTreeSet<String> = ["0000:41:00.0", "0000:41:00.1"].map(String::from).into();

    assert_eq!(prefer(all.clone(), vec![], 2).await, roce, "one adapter");

    let anchor = nics[0].address.clone();
    let chosen = prefer(all.clone(), vec![anchor.clone()], 3).await;
    assert_eq!(chosen.len(), 3);
    assert!(chosen.contains(&anchor), "{chosen:?}");
    assert!(chosen.iter().all(|id| numa_of(id) == 0), "{chosen:?}");
    assert!(
        chosen.is_superset(&roce),
        "then the closest pair: {chosen:?}"
    );

    let anchor = nics[4].address.clone();
    let chosen = prefer(all.clone(), vec![anchor.clone()], 4).await;
    let numa1: BTreeSet<String> = nics[4..8].iter().map(|n| n.address.clone()).collect();
    assert_eq!(chosen, numa1);

    // Without the pair: four on NUMA node 1 fit exactly, leaving node 0's six whole.
    let chosen = prefer(all.clone(), vec![], 4).await;
    assert_eq!(chosen, numa1);

    // Larger than any node: one node whole, the rest from the other.
    let ib_only: Vec<String> = all[..8].to_vec();
    let chosen = prefer(ib_only, vec![], 5).await;
    let on_0 = chosen.iter().filter(|id| numa_of(id) == 0).count();
    assert!(on_0 == 4 || on_0 == 1, "{chosen:?}");
}

/// Exclusive per-port devices on a dual-port RoCE device (one RDMA device, two ports):
/// `<address>-p<port>`; a port's device gives the HCA's uverbs node and that port's MAD
/// nodes only; a port's link state is its own device's health; and a per-HCA pool of the
/// InfiniBand HCAs serves beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_port_devices_on_a_dual_port_roce_device() {
    let pools = json!([
        { "resourceName": "rdma/roce_port", "mode": "exclusive", "unit": "port",
          "selectors": { "deviceIDs": ["101d"] } },
        { "resourceName": "nvidia.com/ib", "mode": "exclusive", "unit": "hca",
          "selectors": { "deviceIDs": ["1021"] } },
    ]);
    let h = serving(
        |node| {
            node.add_connectx6_dx_roce(0xc0, 1, RocePorts::OneDevice)
                .expect("ConnectX-6 Dx");
        },
        config(pools),
        &[("rdma/roce_port", 2), ("nvidia.com/ib", 8)],
    )
    .await;
    let nic = h.node.nic("mlx5_8").expect("roce nic").clone();
    let (p1, p2) = (format!("{}-p1", nic.address), format!("{}-p2", nic.address));
    let view = h.kubelet.resource("rdma/roce_port").expect("view");
    assert_eq!(ids(&view), [p1.clone(), p2.clone()].into());
    for d in &view.devices {
        assert_eq!(numa_nodes(d), [1], "{d:?}");
    }

    let container = allocate_one(&h, "rdma/roce_port", &[&p2]).await;
    let expected: BTreeSet<String> = [nic.uverbs_node(), RDMA_CM.to_string()]
        .into_iter()
        .chain(nic.port_nodes(&nic.ports[1]))
        .collect();
    assert_eq!(device_paths(&container), expected);
    for path in nic.port_nodes(&nic.ports[0]) {
        assert!(!expected.contains(&path), "port 1's {path} leaked");
    }
    let info = info(&container, "PCIDEVICE_RDMA_ROCE_PORT");
    let about = &info[&nic.address];
    assert_eq!(about["rdma"]["ports"], "2");
    assert_eq!(about["rdma"]["link_layer"], "Ethernet");
    assert_eq!(about["net"]["interfaces"], "enp193s0f0np0,enp193s0f1np1");

    let both = allocate_one(&h, "rdma/roce_port", &[&p1, &p2]).await;
    assert_eq!(device_paths(&both), expected_paths(&[&nic]));

    h.node
        .set_link(&nic.ib_device, 2, false)
        .expect("port 2 down");
    let view = wait_until(&h, "rdma/roce_port", |v| v.allocatable() == 1).await;
    assert_eq!(health(&view, &p1), Some(pb::HEALTHY));
    assert_eq!(health(&view, &p2), Some(pb::UNHEALTHY));
    h.node.set_link(&nic.ib_device, 2, true).expect("port 2 up");
    wait_until(&h, "rdma/roce_port", |v| v.allocatable() == 2).await;
}

// ---- Fixtures -------------------------------------------------------------------------

/// A ConnectX-6 Dx in Ethernet mode is an HCA like any other: found through its RDMA
/// devices, with its RoCE net interfaces, its NUMA node, and Ethernet link layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roce_hcas_are_discovered_with_their_net_interfaces() {
    let pools = json!([{ "resourceName": "rdma/roce", "mode": "exclusive",
                         "selectors": { "linkTypes": ["ethernet"] } }]);
    let h = serving(with_roce_nic, config(pools), &[("rdma/roce", 2)]).await;
    let roce: Vec<SimNic> = h.node.nics()[8..].to_vec();
    let view = h.kubelet.resource("rdma/roce").expect("view");
    assert_eq!(ids(&view), addresses(&roce));
    for nic in &roce {
        assert_eq!(
            numa_nodes(device(&view, &nic.address).expect("listed")),
            [0]
        );
        let container = allocate_one(&h, "rdma/roce", &[&nic.address]).await;
        assert_eq!(device_paths(&container), expected_paths(&[nic]));
        let info = info(&container, "PCIDEVICE_RDMA_ROCE");
        let about = &info[&nic.address];
        assert_eq!(about["rdma"]["rdma_dev"], nic.ib_device.as_str());
        assert_eq!(about["rdma"]["link_layer"], "Ethernet");
        assert_eq!(about["net"]["interfaces"], nic.netdev.as_str());
    }
}

/// Character devices numbered against `mlx5_N` (reversed, 12 HCAs, so `mlx5_1` holds
/// index 10 and `mlx5_10` index 1) are matched by their exact `ibdev`: every HCA gets
/// exactly its own nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn character_devices_are_matched_by_ibdev_not_by_index() {
    let h = serving(
        |node| {
            with_roce_nic(node);
            node.add_connectx6_dx_roce(0xc0, 1, RocePorts::PerFunction)
                .expect("second ConnectX-6 Dx");
            node.reverse_char_indices().expect("renumber");
        },
        None,
        &[(DEFAULT, 12)],
    )
    .await;
    let mlx5_1 = h.node.nic("mlx5_1").expect("mlx5_1").clone();
    assert_eq!(mlx5_1.uverbs_node(), "/dev/infiniband/uverbs10");
    assert_eq!(h.node.nic("mlx5_10").expect("mlx5_10").char_index, 1);
    for nic in h.node.nics() {
        let container = allocate_one(&h, DEFAULT, &[&nic.address]).await;
        assert_eq!(
            device_paths(&container),
            expected_paths(&[nic]),
            "{}",
            nic.ib_device
        );
        let info = info(&container, "PCIDEVICE_RDMA_HCA");
        assert_eq!(
            info[&nic.address]["rdma"]["uverbs"],
            nic.uverbs_node().as_str()
        );
    }
}

/// Without issm nodes (the peer plug-in's "RDMA device issm not found"), every HCA is
/// still offered and healthy, and allocations give uverbs, umad and rdma_cm without
/// naming an issm node anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_issm_nodes_still_serves() {
    let pools = json!([
        { "resourceName": "nvidia.com/ib", "mode": "exclusive",
          "selectors": { "pciAddresses": ["0000:19:00.0", "0000:2b:00.0"] } },
        { "resourceName": "rdma/shared", "mode": "shared", "rdmaHcaMax": 3 },
    ]);
    let h = serving(
        |node| node.remove_issm().expect("no issm"),
        config(pools),
        &[("nvidia.com/ib", 2), ("rdma/shared", 3)],
    )
    .await;
    assert!(h.node.nics().iter().all(|n| !n.issm));
    let view = h.kubelet.resource("nvidia.com/ib").expect("view");
    assert_eq!(view.allocatable(), 2);
    let nic = h.node.nics()[0].clone();
    let container = allocate_one(&h, "nvidia.com/ib", &[&nic.address]).await;
    let expected: BTreeSet<String> = [
        nic.uverbs_node(),
        nic.dev_nodes()[1].clone(),
        RDMA_CM.to_string(),
    ]
    .into();
    assert_eq!(device_paths(&container), expected);
    let info = info(&container, "PCIDEVICE_NVIDIA_COM_IB");
    assert!(info[&nic.address]["rdma"].get("issm").is_none(), "{info}");
    assert_eq!(
        info[&nic.address]["rdma"]["umad"],
        nic.dev_nodes()[1].as_str()
    );

    let container = allocate_one(&h, "rdma/shared", &["shared-2"]).await;
    let paths = device_paths(&container);
    assert_eq!(paths.len(), 6 * 2 + 1, "{paths:?}");
    assert!(paths.iter().all(|p| !p.contains("issm")), "{paths:?}");
}

// ---- Configuration --------------------------------------------------------------------

/// The example configuration shipped with the guest is valid and serves what its README
/// says on a node with both kinds of HCA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_serves_both_pools() {
    let text = include_str!("../guests/infiniband/example-config.json");
    let example: Value = serde_json::from_str(text).expect("example is JSON");
    let h = serving(
        with_roce_nic,
        Some(example),
        &[("nvidia.com/ib", 8), ("rdma/roce_shared", 1000)],
    )
    .await;
    let ib: Vec<&SimNic> = h.node.nics()[..8].iter().collect();
    let view = h.kubelet.resource("nvidia.com/ib").expect("view");
    assert_eq!(ids(&view), addresses(ib.iter().copied()));
    let container = allocate_one(&h, "rdma/roce_shared", &["roce_shared-42"]).await;
    let roce: Vec<&SimNic> = h.node.nics()[8..].iter().collect();
    assert_eq!(device_paths(&container), expected_paths(&roce));
}

/// An invalid configuration keeps the guest from serving, and the reason names the bad
/// field by its path; `"cdi": true` is refused until CDI is wired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_names_the_bad_field() {
    for (config, fragments) in [
        (
            json!({ "pools": [{ "resourceName": "rdma/a", "mode": "shared", "rdmaHcaMax": 4,
                                "selectors": { "linkTypes": ["infiniband", "fddi"] } }] }),
            &["pools[0].selectors.linkTypes[1]", "fddi"][..],
        ),
        (
            json!({ "pools": [{ "resourceName": "rdma/a", "mode": "exclusive" },
                              { "resourceName": "rdma/b", "mode": "shared" }] }),
            &["pools[1].rdmaHcaMax", "required"][..],
        ),
        (
            json!({ "pools": [{ "resourceName": "rdma/a", "mode": "exclusive",
                                "selectors": { "vendor": ["15b3"] } }] }),
            &["pools[0].selectors.vendor", "unknown field"][..],
        ),
        (
            json!({ "cdiKind": "rdma" }),
            &["cdiKind", "must be a CDI kind"][..],
        ),
    ] {
        let mut h = Harness::dgx().await;
        add_guest(&h, Some(config.clone()));
        h.start_host().await;
        let skipped = h.host().skipped();
        assert_eq!(skipped.len(), 1, "{config}: {skipped:#?}");
        assert!(skipped[0].path.ends_with("infiniband.wasm"), "{skipped:#?}");
        for fragment in ["invalid config"].iter().chain(fragments) {
            assert!(
                skipped[0].reason.contains(fragment),
                "{fragment:?} not in {:?}",
                skipped[0].reason
            );
        }
        assert!(h.host().resources().is_empty());
        assert!(h.kubelet.registrations().is_empty());
    }
}

/// The release guest stays within the size a ConfigMap applied with `kubectl apply`
/// carries (the same 190 KiB budget as the NVIDIA guest).
#[test]
fn release_guest_fits_the_size_budget() {
    let size = testkit::guests::INFINIBAND_WASM.len();
    println!("infiniband.wasm (release, stripped): {size} bytes");
    assert!(size <= 190 * 1024, "infiniband.wasm is {size} bytes");
}

/// With `cdiKind` set, the guest writes a CDI spec naming every HCA through the host
/// before it answers, and the answer's `cdi_devices` are exactly the HCAs behind the IDs,
/// each resolvable in that spec with the same nodes the device specs hand out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_names_resolve_in_the_spec_written_before_the_answer() {
    let config = Some(json!({ "cdiKind": "nvidia.com/rdma" }));
    let h = serving(unchanged, config, &[(DEFAULT, 8)]).await;
    let nic = &h.node.nics()[2];
    let answer = allocate_one(&h, DEFAULT, &[&nic.address]).await;
    let names: Vec<&str> = answer.cdi_devices.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [format!("nvidia.com/rdma={}", nic.address)]);

    let spec_path = h.node.path("/var/run/cdi/nvidia.com+rdma.json");
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(&spec_path).expect("spec written"))
            .expect("the spec is JSON");
    assert_eq!(spec["kind"], "nvidia.com/rdma");
    let devices = spec["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 8, "one CDI device per HCA");
    let ours = devices
        .iter()
        .find(|d| d["name"] == nic.address.as_str())
        .expect("the allocated HCA is in the spec");
    let spec_nodes: BTreeSet<String> = ours["containerEdits"]["deviceNodes"]
        .as_array()
        .expect("device nodes")
        .iter()
        .filter_map(|n| n["path"].as_str().map(str::to_owned))
        .collect();
    let answer_nodes: BTreeSet<String> =
        answer.devices.iter().map(|d| d.host_path.clone()).collect();
    assert_eq!(
        spec_nodes, answer_nodes,
        "the spec gives what the device specs give"
    );
}
