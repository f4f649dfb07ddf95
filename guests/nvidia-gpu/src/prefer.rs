//! `GetPreferredAllocation`: which of the available devices a container should get.
//!
//! Whole GPUs: close together by what sysfs shows — behind the same PCIe switch (a
//! bridge shared in their device paths), then under the same host bridge, then on the
//! same NUMA node, and only then across NUMA nodes. NVLink topology is not visible in
//! sysfs or procfs, so it is not scored. Replicas of shared GPUs: NVIDIA's `distributed`
//! or `packed` policy. The answer always holds every must-include ID and, where enough
//! are available, exactly `size` IDs.

use crate::config::{Config, ReplicaPolicy};
use crate::enumerate::Gpu;
use crate::order::sort_by_key;
use crate::sharing;

/// Pair scores: a shared bridge below the host bridge outranks everything else.
const SAME_SWITCH: u32 = 100;
const SAME_HOST_BRIDGE: u32 = 40;
const SAME_NUMA: u32 = 20;

/// The preferred IDs for one container.
pub fn preferred(
    config: &Config,
    gpus: &[Gpu],
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    for id in must_include {
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    let mut candidates: Vec<&String> = Vec::new();
    for id in available {
        if !chosen.contains(id) && !candidates.contains(&id) {
            candidates.push(id);
        }
    }
    if chosen.len() >= size || candidates.is_empty() {
        return chosen;
    }
    let gpu_of = |id: &str| {
        let base = sharing::split_id(id).0;
        gpus.iter()
            .find(|g| g.id(config.device_id_strategy) == base)
    };
    let replicated = available
        .iter()
        .chain(must_include)
        .any(|id| sharing::split_id(id).1.is_some());
    if replicated {
        replicas(config, gpus, &gpu_of, &candidates, chosen, size)
    } else {
        topology(&gpu_of, &candidates, chosen, size)
    }
}

/// How close two GPUs are; unknown IDs are close to nothing.
fn affinity(a: Option<&Gpu>, b: Option<&Gpu>) -> u32 {
    let (Some(a), Some(b)) = (a, b) else {
        return 0;
    };
    // `/sys/devices/pci0000:15/0000:15:01.0/...`: three shared components mean the
    // same host bridge; more mean a shared root port or switch below it.
    let shared = a
        .sysfs_path
        .split('/')
        .zip(b.sysfs_path.split('/'))
        .skip(1)
        .take_while(|(x, y)| x == y)
        .count();
    let same_numa = a.numa_node.is_some() && a.numa_node == b.numa_node;
    if shared > 3 {
        SAME_SWITCH + shared as u32
    } else if shared == 3 {
        SAME_HOST_BRIDGE + if same_numa { SAME_NUMA } else { 0 }
    } else if same_numa {
        SAME_NUMA
    } else {
        0
    }
}

/// Greedy growth from every possible first pick (or from the must-include IDs), keeping
/// the set with the highest sum of pair scores; ties go to the lowest PCI addresses.
fn topology<'g>(
    gpu_of: &dyn Fn(&str) -> Option<&'g Gpu>,
    candidates: &[&String],
    chosen: Vec<String>,
    size: usize,
) -> Vec<String> {
    let mut order: Vec<&String> = candidates.to_vec();
    // Known GPUs first, by address; unknown IDs last.
    sort_by_key(&mut order, |id| {
        let address = gpu_of(id).map(|g| g.address.as_str());
        (address.is_none(), address, *id)
    });
    let score = |set: &[String], id: &str| -> u32 {
        set.iter().map(|s| affinity(gpu_of(s), gpu_of(id))).sum()
    };
    let grow = |mut set: Vec<String>| -> (u32, Vec<String>) {
        let mut total = 0;
        while set.len() < size {
            let mut best: Option<(u32, &String)> = None;
            for id in order.iter().filter(|id| !set.contains(id)) {
                let s = score(&set, id);
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, id));
                }
            }
            let Some((s, id)) = best else { break };
            total += s;
            set.push(id.to_string());
        }
        (total, set)
    };
    let seeds: Vec<Vec<String>> = if chosen.is_empty() {
        order.iter().map(|id| vec![id.to_string()]).collect()
    } else {
        vec![chosen]
    };
    let mut best: Option<(u32, Vec<String>)> = None;
    for seed in seeds {
        let (total, set) = grow(seed);
        if best.as_ref().is_none_or(|(b, _)| total > *b) {
            best = Some((total, set));
        }
    }
    best.map(|(_, set)| set).unwrap_or_default()
}

/// One replica at a time: `distributed` takes the GPU with the fewest replicas in use
/// (allocated elsewhere or picked now; then the one picked least now), `packed` the one
/// with the most that still has a free replica; then the lower minor. Within a GPU, the
/// lowest replica number.
fn replicas<'g>(
    config: &Config,
    gpus: &'g [Gpu],
    gpu_of: &dyn Fn(&str) -> Option<&'g Gpu>,
    candidates: &[&String],
    mut chosen: Vec<String>,
    size: usize,
) -> Vec<String> {
    struct Group<'a> {
        base: &'a str,
        order: usize,
        used: u32,
        picked: u32,
        free: Vec<&'a String>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for id in candidates.iter().copied() {
        let base = sharing::split_id(id).0;
        match groups.iter_mut().find(|g| g.base == base) {
            Some(group) => group.free.push(id),
            None => groups.push(Group {
                base,
                order: gpu_of(id)
                    .and_then(|g| gpus.iter().position(|x| x.address == g.address))
                    .unwrap_or(usize::MAX),
                used: 0,
                picked: 0,
                free: vec![id],
            }),
        }
    }
    for group in &mut groups {
        let total = gpu_of(group.base)
            .and_then(|g| sharing::placement(config, g).replicas)
            .unwrap_or(1);
        // In use: allocated elsewhere, or a must-include of this container.
        group.used = total.saturating_sub(u32::try_from(group.free.len()).unwrap_or(u32::MAX));
        sort_by_key(&mut group.free, |id| {
            sharing::split_id(id).1.and_then(|n| n.parse::<u32>().ok())
        });
    }
    let packed = config.sharing.time_slicing.allocation_policy == ReplicaPolicy::Packed;
    while chosen.len() < size {
        let pick = groups
            .iter_mut()
            .filter(|g| !g.free.is_empty())
            .min_by_key(|g| {
                if packed {
                    (u32::MAX - g.used, 0, g.order)
                } else {
                    (g.used, g.picked, g.order)
                }
            });
        let Some(group) = pick else { break };
        let id = group.free.remove(0);
        group.used += 1;
        group.picked += 1;
        chosen.push(id.clone());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(minor: u32, numa: u32, path: &str) -> Gpu {
        Gpu {
            address: path.rsplit('/').next().unwrap().into(),
            uuid: format!("GPU-{minor}"),
            minor,
            model: String::new(),
            numa_node: Some(numa),
            sysfs_path: path.into(),
        }
    }

    /// Two GPUs behind one switch and one on its own root port on NUMA 0; two behind a
    /// switch on NUMA 1.
    fn node() -> Vec<Gpu> {
        vec![
            gpu(
                0,
                0,
                "/sys/devices/pci0000:17/0000:17:01.0/0000:18:00.0/0000:19:00.0/0000:1b:00.0",
            ),
            gpu(
                1,
                0,
                "/sys/devices/pci0000:17/0000:17:01.0/0000:18:00.0/0000:19:01.0/0000:1c:00.0",
            ),
            gpu(2, 0, "/sys/devices/pci0000:3a/0000:3a:01.0/0000:3b:00.0"),
            gpu(
                3,
                1,
                "/sys/devices/pci0000:85/0000:85:01.0/0000:86:00.0/0000:87:00.0/0000:88:00.0",
            ),
            gpu(
                4,
                1,
                "/sys/devices/pci0000:85/0000:85:01.0/0000:86:00.0/0000:87:01.0/0000:89:00.0",
            ),
        ]
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn all() -> Vec<String> {
        ids(&["GPU-4", "GPU-3", "GPU-2", "GPU-1", "GPU-0"])
    }

    #[test]
    fn same_switch_first() {
        let c = Config::default();
        assert_eq!(preferred(&c, &node(), &all(), &[], 2), ["GPU-0", "GPU-1"]);
        let must = ids(&["GPU-4"]);
        assert_eq!(preferred(&c, &node(), &all(), &must, 2), ["GPU-4", "GPU-3"]);
    }

    #[test]
    fn then_same_numa_then_across() {
        let c = Config::default();
        let must = ids(&["GPU-2"]);
        assert_eq!(
            preferred(&c, &node(), &all(), &must, 3),
            ["GPU-2", "GPU-0", "GPU-1"]
        );
        let must = ids(&["GPU-3"]);
        assert_eq!(
            preferred(&c, &node(), &all(), &must, 3),
            ["GPU-3", "GPU-4", "GPU-0"]
        );
        let available = ids(&["GPU-2", "GPU-3", "GPU-4"]);
        assert_eq!(
            preferred(&c, &node(), &available, &[], 3).len(),
            3,
            "exact size even across NUMA nodes"
        );
    }

    #[test]
    fn must_include_always_and_never_more_than_asked() {
        let c = Config::default();
        let must = ids(&["GPU-0", "GPU-3"]);
        assert_eq!(preferred(&c, &node(), &all(), &must, 1), must);
        assert_eq!(preferred(&c, &node(), &all(), &must, 3).len(), 3);
        let unknown = ids(&["GPU-9", "GPU-1"]);
        assert_eq!(preferred(&c, &node(), &unknown, &[], 1), ["GPU-1"]);
    }

    fn shared(policy: &str) -> Config {
        Config::parse(&format!(
            r#"{{"sharing":{{"timeSlicing":{{"allocationPolicy":"{policy}","resources":[{{"replicas":4}}]}}}}}}"#
        ))
        .unwrap()
    }

    fn replicas_of(gpus: &[u32], free: std::ops::Range<u32>) -> Vec<String> {
        gpus.iter()
            .flat_map(|g| free.clone().map(move |n| format!("GPU-{g}::{n}")))
            .collect()
    }

    #[test]
    fn distributed_spreads_and_packed_fills() {
        let gpus = node();
        let mut available = replicas_of(&[0, 1], 0..4);
        // GPU-1 already has two replicas in use elsewhere.
        available.retain(|id| id != "GPU-1::0" && id != "GPU-1::1");
        let d = preferred(&shared("distributed"), &gpus, &available, &[], 3);
        assert_eq!(d, ["GPU-0::0", "GPU-0::1", "GPU-1::2"]);
        let p = preferred(&shared("packed"), &gpus, &available, &[], 3);
        assert_eq!(p, ["GPU-1::2", "GPU-1::3", "GPU-0::0"]);
        let must = ids(&["GPU-0::3"]);
        let p = preferred(&shared("packed"), &gpus, &available, &must, 2);
        assert_eq!(
            p,
            ["GPU-0::3", "GPU-1::2"],
            "must-include first, then the fullest GPU"
        );
    }
}
