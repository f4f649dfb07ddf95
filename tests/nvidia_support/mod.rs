//! Set-up shared by the NVIDIA guest's test files: the mixed L40S + A100 node, the guest
//! with a configuration and a policy, and small readers of what the kubelet sees. Each
//! test binary that includes it uses a different part.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeSet;

pub use integration_tests::view::{allocate, health, ids, wait_until};
use integration_tests::{Harness, WAIT};
use kubelet_api::v1beta1 as pb;
use testkit::SimNode;
use testkit::kubelet::ResourceView;

pub const GPU: &str = "nvidia.com/gpu";
/// The mixed node's offerable GPUs (all but the excluded one).
pub const MIXED_OFFERED: usize = 5;

/// A harness on the mixed L40S + A100 node (in place of the empty node's tree).
pub async fn mixed() -> Harness {
    let mut h = Harness::empty().await;
    h.node = SimNode::mixed_l40s_a100(&h.tmp.path().join("mixed")).expect("mixed node");
    h
}

/// The shipped policy with `extra` JSON fields merged over it.
pub fn policy_with(extra: serde_json::Value) -> String {
    let mut policy: serde_json::Value =
        serde_json::from_str(testkit::guests::NVIDIA_GPU_POLICY).expect("shipped policy is JSON");
    if let (Some(base), Some(extra)) = (policy.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    policy.to_string()
}

/// Starts the host with the NVIDIA guest (`config`, if any) under `policy`.
pub async fn serve(mut h: Harness, config: Option<&str>, policy: &str) -> Harness {
    h.add_guest_with_policy(
        "nvidia-gpu",
        testkit::guests::NVIDIA_GPU_WASM,
        config,
        Some(policy),
    );
    h.start_host().await;
    h
}

/// The mixed node serving the guest under the shipped policy, once `resource` lists
/// `devices` devices.
pub async fn mixed_serving(config: Option<&str>, resource: &str, devices: usize) -> Harness {
    let h = serve(mixed().await, config, testkit::guests::NVIDIA_GPU_POLICY).await;
    wait_until(&h, resource, |v| v.devices.len() == devices).await;
    h
}

pub fn is_healthy(view: &ResourceView, id: &str) -> bool {
    health(view, id) == Some(pb::HEALTHY)
}

pub fn is_unhealthy(view: &ResourceView, id: &str) -> bool {
    health(view, id) == Some(pb::UNHEALTHY)
}

/// `GetPreferredAllocation` for one container; the answer's IDs.
pub async fn preferred(
    h: &Harness,
    resource: &str,
    available: &[&str],
    must_include: &[&str],
    size: i32,
) -> Vec<String> {
    let owned = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
    let answer = tokio::time::timeout(
        WAIT,
        h.kubelet
            .preferred_allocation(resource, owned(available), owned(must_include), size),
    )
    .await
    .expect("GetPreferredAllocation returns")
    .expect("GetPreferredAllocation succeeds");
    answer
        .container_responses
        .into_iter()
        .next()
        .map(|c| c.device_i_ds)
        .unwrap_or_default()
}

/// The UUID of the mixed node's GPU at `address`.
pub fn uuid(h: &Harness, address: &str) -> String {
    h.node
        .gpu(address)
        .expect("GPU in the fixture")
        .uuid
        .clone()
}

pub fn env<'a>(container: &'a pb::ContainerAllocateResponse, key: &str) -> Option<&'a str> {
    container.envs.get(key).map(String::as_str)
}

pub fn device_paths(container: &pb::ContainerAllocateResponse) -> BTreeSet<String> {
    container
        .devices
        .iter()
        .map(|d| d.host_path.clone())
        .collect()
}
