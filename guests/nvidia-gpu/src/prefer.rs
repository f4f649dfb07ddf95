//! `GetPreferredAllocation`: which of the available devices a container should get.
//!
//! Whole GPUs: first by NVLink connectivity when NVML showed it (links between two GPUs,
//! directly or through a shared NVSwitch), then close together by what sysfs shows —
//! behind the same PCIe switch (a bridge shared in their device paths), then under the
//! same host bridge, then on the same NUMA node, and only then across NUMA nodes. MIG
//! devices: by their GPUs' PCIe/NUMA closeness alone (MIG devices do not use NVLink), so
//! devices of one GPU go together. Replicas of shared GPUs: NVIDIA's `distributed` or
//! `packed` policy. The answer always holds every must-include ID and, where enough are
//! available, exactly `size` IDs.

use crate::config::{Config, ReplicaPolicy};
use crate::enumerate::Gpu;
use crate::mig;
use crate::order::sort_by_key;
use crate::sharing;

/// Pair scores: a shared bridge below the host bridge outranks everything else.
const SAME_SWITCH: u32 = 100;
const SAME_HOST_BRIDGE: u32 = 40;
const SAME_NUMA: u32 = 20;
/// NVLink counts above any sum of PCIe/NUMA scores: a score is `links << 32 | pcie`.
const NVLINK_SHIFT: u32 = 32;

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
    let refs: Vec<&Gpu> = gpus.iter().collect();
    // An inconsistent MIG layout is refused when devices are listed; here nothing is known.
    let units = mig::units(config, &refs).unwrap_or_default();
    let unit_of = |id: &str| {
        let base = sharing::split_id(id).0;
        units
            .iter()
            .find(|(_, u)| u.id(config.device_id_strategy) == base)
            .map(|(_, u)| u)
    };
    let gpu_of = |id: &str| unit_of(id).map(|u| u.gpu);
    let nvlink = !candidates
        .iter()
        .any(|id| unit_of(id).is_some_and(|u| u.mig.is_some()));
    let replicated = available
        .iter()
        .chain(must_include)
        .any(|id| sharing::split_id(id).1.is_some());
    if replicated {
        replicas(config, gpus, &gpu_of, &candidates, chosen, size)
    } else {
        topology(&gpu_of, nvlink, &candidates, chosen, size)
    }
}

/// NVLinks between two GPUs: direct ones, and through each NVSwitch both reach, the
/// fewer of their links to it.
pub fn nvlinks(a: &Gpu, b: &Gpu) -> u32 {
    a.links
        .iter()
        .map(|(remote, to_gpu, n)| {
            if *to_gpu {
                if remote.eq_ignore_ascii_case(&b.address) {
                    *n
                } else {
                    0
                }
            } else {
                b.links
                    .iter()
                    .find(|(r, g, _)| !g && r == remote)
                    .map_or(0, |(.., m)| (*n).min(*m))
            }
        })
        .sum()
}

/// How close two GPUs are, NVLink first when `nvlink`; unknown IDs are close to nothing.
fn affinity(a: Option<&Gpu>, b: Option<&Gpu>, nvlink: bool) -> u64 {
    let (Some(a), Some(b)) = (a, b) else {
        return 0;
    };
    let links = if nvlink && a.address != b.address {
        u64::from(nvlinks(a, b)) << NVLINK_SHIFT
    } else {
        0
    };
    links + u64::from(pcie_affinity(a, b))
}

/// PCIe and NUMA closeness from the sysfs paths.
fn pcie_affinity(a: &Gpu, b: &Gpu) -> u32 {
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
    nvlink: bool,
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
    let score = |set: &[String], id: &str| -> u64 {
        set.iter()
            .map(|s| affinity(gpu_of(s), gpu_of(id), nvlink))
            .sum()
    };
    let grow = |mut set: Vec<String>| -> (u64, Vec<String>) {
        let mut total = 0;
        while set.len() < size {
            let mut best: Option<(u64, &String)> = None;
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
    let mut best: Option<(u64, Vec<String>)> = None;
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
    gpus: &[Gpu],
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
            ..Gpu::default()
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

    /// The same node with NVLinks across its PCIe/NUMA grouping: GPU-0 and GPU-3 linked
    /// directly (4 links), GPU-1 and GPU-4 through an NVSwitch (2 and 3 links to it),
    /// GPU-2 with one link to that switch.
    fn linked() -> Vec<Gpu> {
        let mut gpus = node();
        let switch = "0000:05:00.0";
        let peer = |g: &Gpu| g.address.clone();
        let (a0, a3) = (peer(&gpus[0]), peer(&gpus[3]));
        gpus[0].links = vec![(a3, true, 4)];
        gpus[3].links = vec![(a0, true, 4)];
        gpus[1].links = vec![(switch.into(), false, 2)];
        gpus[4].links = vec![(switch.into(), false, 3)];
        gpus[2].links = vec![(switch.into(), false, 1)];
        gpus
    }

    #[test]
    fn nvlink_counts_direct_and_switched_links() {
        let g = linked();
        assert_eq!(nvlinks(&g[0], &g[3]), 4);
        assert_eq!(nvlinks(&g[3], &g[0]), 4);
        assert_eq!(nvlinks(&g[1], &g[4]), 2);
        assert_eq!(nvlinks(&g[4], &g[1]), 2);
        assert_eq!(nvlinks(&g[2], &g[4]), 1);
        assert_eq!(nvlinks(&g[0], &g[1]), 0);
    }

    #[test]
    fn nvlink_outranks_pcie_and_numa() {
        let c = Config::default();
        // sysfs alone: the two behind one switch.
        assert_eq!(preferred(&c, &node(), &all(), &[], 2), ["GPU-0", "GPU-1"]);
        assert_eq!(preferred(&c, &linked(), &all(), &[], 2), ["GPU-0", "GPU-3"]);
        let must = ids(&["GPU-4"]);
        assert_eq!(preferred(&c, &node(), &all(), &must, 2), ["GPU-4", "GPU-3"]);
        assert_eq!(
            preferred(&c, &linked(), &all(), &must, 2),
            ["GPU-4", "GPU-1"]
        );
        // GPU-1 is taken: GPU-2's one switched link beats the lower address of GPU-0.
        let available = ids(&["GPU-0", "GPU-2", "GPU-4"]);
        assert_eq!(
            preferred(&c, &linked(), &available, &ids(&["GPU-4"]), 2),
            ["GPU-4", "GPU-2"]
        );
        assert_eq!(
            preferred(&c, &node(), &available, &ids(&["GPU-4"]), 2),
            ["GPU-4", "GPU-0"]
        );
    }

    #[test]
    fn dgx_mig_devices_of_one_gpu_go_together() {
        let c = Config::parse(r#"{"migStrategy":"mixed"}"#).unwrap();
        let gpus = crate::testdata::dgx(true);
        let small: Vec<String> = (7..14).map(|gi| format!("MIG-0-{gi}")).collect();
        assert_eq!(preferred(&c, &gpus, &small, &[], 3).len(), 3);
        let mut both = ids(&["MIG-1-1", "MIG-1-2"]);
        both.push("MIG-0-7".into());
        let picked = preferred(&c, &gpus, &both, &ids(&["MIG-1-1"]), 2);
        assert_eq!(picked, ["MIG-1-1", "MIG-1-2"]);
        // Whole GPUs on the DGX: all pairs are equal over NVLink; PCIe/NUMA decide.
        let whole: Vec<String> = (2..8).map(|i| format!("GPU-{i}")).collect();
        assert_eq!(preferred(&c, &gpus, &whole, &[], 2), ["GPU-2", "GPU-3"]);
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
