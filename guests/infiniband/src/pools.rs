//! Which HCAs make up each pool, and the devices a pool advertises for them.
//!
//! Device IDs (stable across rescans and reboots, at most 63 characters):
//! - shared: `<name>-<n>` for n in `0..rdmaHcaMax`, `<name>` being the resource name's part
//!   after the `/` (`rdma/hca_shared_a` → `hca_shared_a-0` … `hca_shared_a-999`);
//! - exclusive per HCA: the PCI address (`0000:19:00.0`), which survives the renaming and
//!   renumbering of `mlx5_N`;
//! - exclusive per port: the PCI address and the port (`0000:19:00.0-p1`).

use crate::config::{Config, Mode, Pool, Selectors, Unit};
use crate::discover::{Hca, Node, Port};
use wdp_guest_sdk::types::{Device, Health};

/// Whether an HCA passes every selector the pool sets (OR within one selector).
pub fn selects(s: &Selectors, hca: &Hca) -> bool {
    (s.vendors.is_empty() || s.vendors.contains(&hca.vendor))
        && (s.device_ids.is_empty() || s.device_ids.contains(&hca.device))
        && (s.drivers.is_empty() || hca.driver.as_ref().is_some_and(|d| s.drivers.contains(d)))
        && (s.if_names.is_empty() || hca.net_devices.iter().any(|n| s.if_names.contains(n)))
        && (s.link_types.is_empty()
            || hca
                .ports
                .iter()
                .any(|p| s.link_types.iter().any(|t| t.is(&p.link_layer))))
        && (s.pci_addresses.is_empty() || s.pci_addresses.contains(&hca.address))
}

/// The HCAs of pool `index`. An HCA that an exclusive pool selects belongs to the first
/// such pool alone: no other pool, shared or exclusive, may hand it out as well.
pub fn members<'a>(config: &Config, index: usize, hcas: &'a [Hca]) -> Vec<&'a Hca> {
    let Some(pool) = config.pools.get(index) else {
        return Vec::new();
    };
    hcas.iter()
        .filter(|hca| selects(&pool.selectors, hca))
        .filter(|hca| {
            let owner = config
                .pools
                .iter()
                .position(|p| matches!(p.mode, Mode::Exclusive(_)) && selects(&p.selectors, hca));
            owner.is_none_or(|owner| owner == index)
        })
        .collect()
}

/// What one exclusive device stands for.
#[derive(Clone, Copy, Debug)]
pub enum Item<'a> {
    Hca(&'a Hca),
    Port(&'a Hca, &'a Port),
}

impl<'a> Item<'a> {
    pub fn id(&self) -> String {
        match self {
            Item::Hca(hca) => hca.address.clone(),
            Item::Port(hca, port) => format!("{}-p{}", hca.address, port.number),
        }
    }

    pub fn hca(&self) -> &'a Hca {
        match self {
            Item::Hca(hca) | Item::Port(hca, _) => hca,
        }
    }

    /// Why the device is unhealthy; none when it is healthy.
    pub fn problem(&self) -> Option<String> {
        match self {
            Item::Hca(hca) => hca.problem(),
            Item::Port(hca, port) => {
                if hca.uverbs.is_empty() {
                    hca.problem()
                } else {
                    port.problem.clone()
                }
            }
        }
    }
}

/// The exclusive devices of a pool's members.
pub fn items<'a>(unit: Unit, members: &[&'a Hca]) -> Vec<Item<'a>> {
    match unit {
        Unit::Hca => members.iter().map(|h| Item::Hca(h)).collect(),
        Unit::Port => members
            .iter()
            .flat_map(|h| h.ports.iter().map(move |p| Item::Port(h, p)))
            .collect(),
    }
}

/// The ID of shared slot `n`.
pub fn slot_id(pool: &Pool, n: u32) -> String {
    format!("{}-{n}", pool.short_name())
}

/// Whether `id` is one of the pool's `slots` slot IDs.
pub fn is_slot(pool: &Pool, slots: u32, id: &str) -> bool {
    id.strip_prefix(pool.short_name())
        .and_then(|rest| rest.strip_prefix('-'))
        // Only the canonical spelling: digits, no sign, no leading zero.
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && (!n.starts_with('0') || *n == "0"))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < slots)
}

/// NUMA nodes of a set of HCAs, sorted, without repeats.
pub fn numa_nodes<'a>(hcas: impl Iterator<Item = &'a Hca>) -> Vec<u32> {
    let mut nodes: Vec<u32> = hcas.filter_map(|h| h.numa_node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// A device and, when unhealthy, why.
pub struct Listed {
    pub device: Device,
    pub problem: Option<String>,
}

/// The devices pool `index` advertises on this node.
pub fn devices(config: &Config, index: usize, node: &Node) -> Vec<Listed> {
    let Some(pool) = config.pools.get(index) else {
        return Vec::new();
    };
    let members = members(config, index, &node.hcas);
    match pool.mode {
        // Slots without an HCA behind them would hand out nothing: advertise none.
        Mode::Shared { .. } if members.is_empty() => Vec::new(),
        Mode::Shared { slots } => {
            // A slot gives every HCA of the pool, so it follows all of their health.
            let problem = members.iter().find_map(|h| {
                h.problem()
                    .map(|why| format!("{} ({}): {why}", h.name, h.address))
            });
            let numa_nodes = numa_nodes(members.iter().copied());
            (0..slots)
                .map(|n| Listed {
                    device: Device {
                        id: slot_id(pool, n),
                        health: health(&problem),
                        numa_nodes: numa_nodes.clone(),
                    },
                    // Said once for the pool, not for each of its slots.
                    problem: if n == 0 { problem.clone() } else { None },
                })
                .collect()
        }
        Mode::Exclusive(unit) => items(unit, &members)
            .into_iter()
            .map(|item| {
                let problem = item.problem();
                Listed {
                    device: Device {
                        id: item.id(),
                        health: health(&problem),
                        numa_nodes: item.hca().numa_node.into_iter().collect(),
                    },
                    problem: problem
                        .map(|why| format!("{} ({}): {why}", item.hca().name, item.id())),
                }
            })
            .collect(),
    }
}

fn health(problem: &Option<String>) -> Health {
    if problem.is_none() {
        Health::Healthy
    } else {
        Health::Unhealthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LinkType;

    fn hca(n: u8, link_layer: &str, numa: u32) -> Hca {
        Hca {
            name: format!("mlx5_{n}"),
            address: format!("0000:{n:02x}:00.0"),
            vendor: 0x15b3,
            device: if link_layer == "Ethernet" {
                0x101d
            } else {
                0x1021
            },
            driver: Some("mlx5_core".into()),
            numa_node: Some(numa),
            sysfs_path: format!("/sys/devices/pci0000:{n:02x}/0000:{n:02x}:00.0"),
            uverbs: vec![format!("/dev/infiniband/uverbs{n}")],
            ports: vec![Port {
                number: 1,
                link_layer: link_layer.into(),
                problem: None,
                umad: Vec::new(),
                issm: Vec::new(),
            }],
            net_devices: vec![format!("net{n}")],
        }
    }

    fn pool(name: &str, mode: Mode, selectors: Selectors) -> Pool {
        Pool {
            resource_name: format!("rdma/{name}"),
            mode,
            selectors,
        }
    }

    #[test]
    fn selectors_or_within_and_across() {
        let (ib, eth) = (hca(1, "InfiniBand", 0), hca(2, "Ethernet", 1));
        let s = Selectors {
            link_types: vec![LinkType::InfiniBand, LinkType::Ethernet],
            device_ids: vec![0x1021],
            ..Selectors::default()
        };
        assert!(selects(&s, &ib) && !selects(&s, &eth));
        for s in [
            Selectors {
                vendors: vec![0x8086],
                ..Selectors::default()
            },
            Selectors {
                drivers: vec!["irdma".into()],
                ..Selectors::default()
            },
            Selectors {
                if_names: vec!["net2".into()],
                ..Selectors::default()
            },
            Selectors {
                link_types: vec![LinkType::Ethernet],
                ..Selectors::default()
            },
            Selectors {
                pci_addresses: vec!["0000:02:00.0".into()],
                ..Selectors::default()
            },
        ] {
            assert!(!selects(&s, &ib), "{s:?}");
        }
        assert!(selects(&Selectors::default(), &ib));
    }

    #[test]
    fn an_exclusive_pool_keeps_its_hcas_to_itself() {
        let hcas = [hca(1, "InfiniBand", 0), hca(2, "Ethernet", 1)];
        let config = Config {
            pools: vec![
                pool("shared", Mode::Shared { slots: 4 }, Selectors::default()),
                pool(
                    "roce",
                    Mode::Exclusive(Unit::Hca),
                    Selectors {
                        link_types: vec![LinkType::Ethernet],
                        ..Selectors::default()
                    },
                ),
                pool("rest", Mode::Exclusive(Unit::Hca), Selectors::default()),
            ],
            cdi_kind: None,
        };
        let names = |i| -> Vec<String> {
            members(&config, i, &hcas)
                .iter()
                .map(|h| h.name.clone())
                .collect()
        };
        assert_eq!(names(0), Vec::<String>::new());
        assert_eq!(names(1), ["mlx5_2"]);
        assert_eq!(names(2), ["mlx5_1"]);
        assert!(names(3).is_empty());
    }

    #[test]
    fn shared_slots_follow_every_member() {
        let mut node = Node {
            hcas: vec![hca(1, "InfiniBand", 1), hca(2, "InfiniBand", 0)],
            rdma_cm: None,
        };
        let config = Config {
            pools: vec![pool(
                "hca_shared_a",
                Mode::Shared { slots: 1000 },
                Selectors::default(),
            )],
            cdi_kind: None,
        };
        let listed = devices(&config, 0, &node);
        assert_eq!(listed.len(), 1000);
        assert_eq!(listed[0].device.id, "hca_shared_a-0");
        assert_eq!(listed[999].device.id, "hca_shared_a-999");
        assert!(
            listed
                .iter()
                .all(|l| l.device.health == Health::Healthy && l.device.numa_nodes == [0, 1])
        );
        node.hcas[1].ports[0].problem = Some("down".into());
        let listed = devices(&config, 0, &node);
        assert!(listed.iter().all(|l| l.device.health == Health::Unhealthy));
        assert!(listed[0].problem.as_deref().unwrap().contains("mlx5_2"));
        assert!(listed[1].problem.is_none());
        node.hcas.clear();
        assert!(devices(&config, 0, &node).is_empty());
    }

    #[test]
    fn slot_ids_parse_back() {
        let p = pool("a", Mode::Shared { slots: 10 }, Selectors::default());
        assert!(is_slot(&p, 10, "a-0") && is_slot(&p, 10, "a-9"));
        for bad in ["a-10", "a-", "a-01", "b-1", "a1", "a--1", "a-+1"] {
            assert!(!is_slot(&p, 10, bad), "{bad}");
        }
    }

    #[test]
    fn exclusive_ids_per_hca_and_per_port() {
        let mut two = hca(3, "Ethernet", 0);
        let mut p2 = two.ports[0].clone();
        p2.number = 2;
        p2.problem = Some("down".into());
        two.ports.push(p2);
        let ids = |unit| -> Vec<(String, bool)> {
            items(unit, &[&two])
                .iter()
                .map(|i| (i.id(), i.problem().is_none()))
                .collect()
        };
        assert_eq!(ids(Unit::Hca), [("0000:03:00.0".to_string(), false)]);
        assert_eq!(
            ids(Unit::Port),
            [
                ("0000:03:00.0-p1".to_string(), true),
                ("0000:03:00.0-p2".to_string(), false)
            ]
        );
    }
}
