//! Time-slicing and preferred allocation with the NVIDIA guest: replicas `<uuid>::<n>`,
//! per-GPU replica counts, `renameByDefault`, `failRequestsGreaterThanOne`, the packed
//! and distributed replica policies, and topology-aware preference for whole GPUs (same
//! PCIe switch, then same NUMA node, must-include IDs, exact size, cross-NUMA fallback).

mod nvidia_support;

use std::collections::BTreeSet;

use integration_tests::Harness;
use nvidia_support::*;

fn replicas(uuid: &str, n: u32) -> Vec<String> {
    (0..n).map(|k| format!("{uuid}::{k}")).collect()
}

fn refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// Every GPU shared 4 ways: 4 replicas per GPU under nvidia.com/gpu; two replicas of one GPU in one container give that GPU once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_slicing_advertises_replicas_of_every_gpu() {
    let config =
        r#"{"sharing":{"timeSlicing":{"resources":[{"name":"nvidia.com/gpu","replicas":4}]}}}"#;
    let h = mixed_serving(Some(config), GPU, MIXED_OFFERED * 4).await;
    let view = h.kubelet.resource(GPU).expect("view");
    let a = uuid(&h, "0000:1a:00.0");
    let expected: BTreeSet<String> = h
        .node
        .gpus()
        .iter()
        .filter(|g| g.address != "0000:b0:00.0")
        .flat_map(|g| replicas(&g.uuid, 4))
        .collect();
    assert_eq!(ids(&view), expected);
    assert_eq!(h.kubelet.registrations().len(), 1);

    let answer = allocate(&h, GPU, &[&[&format!("{a}::0"), &format!("{a}::3")]])
        .await
        .expect("two replicas of one GPU");
    let container = &answer.container_responses[0];
    assert_eq!(env(container, "NVIDIA_VISIBLE_DEVICES"), Some(a.as_str()));
    let nodes: Vec<&str> = container
        .devices
        .iter()
        .map(|d| d.host_path.as_str())
        .collect();
    assert_eq!(
        nodes.iter().filter(|p| **p == "/dev/nvidia1").count(),
        1,
        "{nodes:?}"
    );
}

/// `renameByDefault` advertises the shared GPUs as nvidia.com/gpu.shared only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_by_default_advertises_dot_shared() {
    let config =
        r#"{"sharing":{"timeSlicing":{"renameByDefault":true,"resources":[{"replicas":2}]}}}"#;
    let h = mixed_serving(Some(config), "nvidia.com/gpu.shared", MIXED_OFFERED * 2).await;
    let names: BTreeSet<String> = h
        .kubelet
        .registrations()
        .into_iter()
        .map(|r| r.request.resource_name)
        .collect();
    assert_eq!(names, BTreeSet::from(["nvidia.com/gpu.shared".to_string()]));
    let c = uuid(&h, "0000:3b:00.0");
    let answer = allocate(&h, "nvidia.com/gpu.shared", &[&[&format!("{c}::1")]])
        .await
        .expect("allocate a replica");
    assert_eq!(
        env(&answer.container_responses[0], "NVIDIA_VISIBLE_DEVICES"),
        Some(c.as_str())
    );
}

/// Per-GPU replica counts (NVIDIA's schema has them but its plug-in refuses them): the L40S pair 4 ways as `.shared`, the lone A100 2 ways renamed, the rest whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_counts_differ_per_gpu() {
    let config = r#"{"sharing":{"timeSlicing":{"renameByDefault":true,"resources":[
        {"devices":["0000:1a:00.0","0000:1b:00.0"],"replicas":4},
        {"devices":["0000:3b:00.0"],"replicas":2,"rename":"nvidia.com/a100.half"}]}}}"#;
    let h = mixed_serving(Some(config), GPU, 2).await;
    let whole = ids(&h.kubelet.resource(GPU).expect("view"));
    let expected: BTreeSet<String> = ["0000:88:00.0", "0000:89:00.0"]
        .iter()
        .map(|a| uuid(&h, a))
        .collect();
    assert_eq!(whole, expected);
    let shared = wait_until(&h, "nvidia.com/gpu.shared", |v| v.devices.len() == 8).await;
    let l40s: BTreeSet<String> = ["0000:1a:00.0", "0000:1b:00.0"]
        .iter()
        .flat_map(|a| replicas(&uuid(&h, a), 4))
        .collect();
    assert_eq!(ids(&shared), l40s);
    let half = wait_until(&h, "nvidia.com/a100.half", |v| v.devices.len() == 2).await;
    assert_eq!(
        ids(&half),
        replicas(&uuid(&h, "0000:3b:00.0"), 2).into_iter().collect()
    );
    // NUMA topology is the GPU's, for every replica.
    for d in &shared.devices {
        let nodes: Vec<i64> = d
            .topology
            .iter()
            .flat_map(|t| t.nodes.iter().map(|n| n.id))
            .collect();
        assert_eq!(nodes, [0], "{d:?}");
    }
}

/// `failRequestsGreaterThanOne` refuses a container asking for two replicas, naming the setting; one replica is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_requests_greater_than_one_refuses_two_replicas() {
    let config = r#"{"sharing":{"timeSlicing":{"failRequestsGreaterThanOne":true,"resources":[{"replicas":2}]}}}"#;
    let h = mixed_serving(Some(config), GPU, MIXED_OFFERED * 2).await;
    let (a, b) = (uuid(&h, "0000:1a:00.0"), uuid(&h, "0000:1b:00.0"));
    let status = allocate(&h, GPU, &[&[&format!("{a}::0"), &format!("{b}::0")]])
        .await
        .expect_err("two replicas refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("failRequestsGreaterThanOne"),
        "{status:?}"
    );
    allocate(&h, GPU, &[&[&format!("{a}::0")], &[&format!("{b}::1")]])
        .await
        .expect("one replica per container");
}

/// The preferred replicas: `distributed` spreads over the GPUs with the fewest in use, `packed` fills the GPU with the most in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_policies_distributed_and_packed() {
    for (policy, expect_spread) in [("distributed", true), ("packed", false)] {
        let config = format!(
            r#"{{"sharing":{{"timeSlicing":{{"allocationPolicy":"{policy}","resources":[{{"devices":["0000:88:00.0","0000:89:00.0"],"replicas":4}}]}}}}}}"#
        );
        let h = mixed_serving(Some(&config), GPU, 3 + 8).await;
        let (d, e) = (uuid(&h, "0000:88:00.0"), uuid(&h, "0000:89:00.0"));
        // Two of e's replicas are taken elsewhere.
        let mut available = replicas(&d, 4);
        available.extend(replicas(&e, 4).into_iter().skip(2));
        let answer = preferred(&h, GPU, &refs(&available), &[], 2).await;
        let gpus: BTreeSet<&str> = answer
            .iter()
            .map(|id| id.split("::").next().unwrap_or(""))
            .collect();
        assert_eq!(answer.len(), 2, "{policy}: {answer:?}");
        if expect_spread {
            // d has none in use: both from d (0 then 1 in use, still fewer than e's 2).
            assert_eq!(answer, [format!("{d}::0"), format!("{d}::1")], "{policy}");
        } else {
            assert_eq!(gpus, BTreeSet::from([e.as_str()]), "{policy}: {answer:?}");
        }
        // With three asked, distributed moves on to e once d has as many in use.
        if expect_spread {
            let answer = preferred(&h, GPU, &refs(&available), &[], 3).await;
            assert_eq!(answer[2], format!("{e}::2"), "{answer:?}");
        }
    }
}

fn mixed_uuids(h: &Harness, addresses: &[&str]) -> Vec<String> {
    addresses.iter().map(|a| uuid(h, a)).collect()
}

/// Whole GPUs: two behind one PCIe switch first; with a must-include, its switch partner, else its NUMA node; exact size; across NUMA nodes only when one node has too few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_follows_switch_then_numa() {
    let h = mixed_serving(None, GPU, MIXED_OFFERED).await;
    let all = mixed_uuids(
        &h,
        &[
            "0000:89:00.0",
            "0000:3b:00.0",
            "0000:1b:00.0",
            "0000:88:00.0",
            "0000:1a:00.0",
        ],
    );
    let [a, b, c, d, e] = [
        "0000:1a:00.0",
        "0000:1b:00.0",
        "0000:3b:00.0",
        "0000:88:00.0",
        "0000:89:00.0",
    ]
    .map(|x| uuid(&h, x));
    let all = refs(&all);

    // Same switch: the L40S pair (lowest addresses among equally good pairs).
    assert_eq!(
        preferred(&h, GPU, &all, &[], 2).await,
        [a.clone(), b.clone()]
    );
    // Must-include d: its switch partner e.
    assert_eq!(
        preferred(&h, GPU, &all, &[&d], 2).await,
        [d.clone(), e.clone()]
    );
    // Must-include c (own root port, NUMA 0): the NUMA-0 pair, not the NUMA-1 one.
    assert_eq!(
        preferred(&h, GPU, &all, &[&c], 3).await,
        [c.clone(), a.clone(), b.clone()]
    );
    // NUMA 1 has two GPUs: a third comes from NUMA 0.
    let answer = preferred(&h, GPU, &all, &[&d], 3).await;
    assert_eq!(answer, [d.clone(), e.clone(), a.clone()]);
    // Exactly the size asked, always with every must-include.
    let answer = preferred(&h, GPU, &all, &[&e, &a], 4).await;
    assert_eq!(answer.len(), 4);
    assert_eq!(answer[..2], [e.clone(), a.clone()]);
    // Fewer available than asked: all of them.
    assert_eq!(preferred(&h, GPU, &[&c, &d], &[], 3).await.len(), 2);
}

/// On the DGX (one GPU per switch) the NUMA node decides: four on NUMA 0, or the four of a must-include's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_on_the_dgx_keeps_to_one_numa_node() {
    let h = serve(
        Harness::dgx().await,
        None,
        testkit::guests::NVIDIA_GPU_POLICY,
    )
    .await;
    wait_until(&h, GPU, |v| v.devices.len() == 8).await;
    let gpus = h.node.gpus();
    let all: Vec<&str> = gpus.iter().rev().map(|g| g.uuid.as_str()).collect();
    let on = |numa: u32| -> BTreeSet<String> {
        gpus.iter()
            .filter(|g| g.numa_node == numa)
            .map(|g| g.uuid.clone())
            .collect()
    };
    let answer: BTreeSet<String> = preferred(&h, GPU, &all, &[], 4).await.into_iter().collect();
    assert_eq!(answer, on(0));
    let must = gpus.iter().find(|g| g.numa_node == 1).expect("NUMA 1 GPU");
    let answer = preferred(&h, GPU, &all, &[&must.uuid], 4).await;
    assert_eq!(answer[0], must.uuid);
    assert_eq!(answer.into_iter().collect::<BTreeSet<_>>(), on(1));
}
