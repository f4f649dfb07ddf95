//! Answering the kubelet's `Allocate`, fail-closed: a container gets the character
//! devices of the HCAs (or ports) behind its IDs and the shared `rdma_cm`, nothing else,
//! and two variables that say what it got, in the format of the SR-IOV plug-in's
//! (`PCIDEVICE_<RESOURCE>` and `PCIDEVICE_<RESOURCE>_INFO`) so that tools reading those
//! read these too.

use crate::config::{Config, Mode, Pool};
use crate::discover::{self, Hca, Node, Port};
use crate::json;
use crate::pools::{self, Item};
use wdp_guest_sdk::alloc;
use wdp_guest_sdk::cdi::{Spec, qualified_name};
use wdp_guest_sdk::host::{cdi, log};
use wdp_guest_sdk::types::{ContainerAllocation, DeviceSpec, Error, LogLevel};

/// One HCA a container gets, with the ports whose MAD nodes it gets.
#[derive(Debug)]
struct Grant<'a> {
    hca: &'a Hca,
    ports: Vec<&'a Port>,
}

/// One answer per container, in request order, for pool `index`.
pub fn allocate(
    config: &Config,
    index: usize,
    containers: &[Vec<String>],
) -> Result<Vec<ContainerAllocation>, Error> {
    let pool = config
        .pools
        .get(index)
        .ok_or_else(|| Error::InvalidArgument(format!("no pool number {index}")))?;
    // Re-enumerate: character devices and links are only as current as the last look.
    let node = discover::node()?;
    let members = pools::members(config, index, &node.hcas);
    // The spec names every HCA of the node, so names handed out earlier stay
    // resolvable when the kubelet replays an answer; it is written before any answer.
    let cdi_names = match &config.cdi_kind {
        Some(kind) => Some(write_cdi_spec(kind, &node)?),
        None => None,
    };
    containers
        .iter()
        .map(|ids| {
            let grants = match pool.mode {
                Mode::Shared { slots } => shared(pool, slots, &members, ids)?,
                Mode::Exclusive(unit) => exclusive(pool, &pools::items(unit, &members), ids)?,
            };
            let mut answer = container_allocation(pool, &grants, &node);
            if let (Some(kind), Some(written)) = (&config.cdi_kind, &cdi_names) {
                answer.cdi_devices = grants
                    .iter()
                    .map(|g| qualified_name(kind, &g.hca.address))
                    .filter(|name| written.contains(name))
                    .collect();
            }
            Ok(answer)
        })
        .collect()
}

/// Writes the CDI spec of `kind`: one device per HCA (named by PCI address), each with
/// its uverbs, umad and issm nodes and the shared rdma_cm. Returns the names written.
fn write_cdi_spec(kind: &str, node: &Node) -> Result<Vec<String>, Error> {
    let mut spec = Spec::new(kind);
    for hca in &node.hcas {
        let mut paths = hca.uverbs.clone();
        for port in &hca.ports {
            paths.extend(port.umad.iter().cloned());
            paths.extend(port.issm.iter().cloned());
        }
        paths.extend(node.rdma_cm.clone());
        spec.device(&hca.address, paths);
    }
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    // The host's refusal as it is: no context added (operators match on its text).
    cdi::write_spec(&spec.to_json())
}

/// Shared slots: any slot of the pool gives every HCA of the pool with all its ports.
fn shared<'a>(
    pool: &Pool,
    slots: u32,
    members: &[&'a Hca],
    ids: &[String],
) -> Result<Vec<Grant<'a>>, Error> {
    if let Some(id) = ids.iter().find(|id| !pools::is_slot(pool, slots, id)) {
        return Err(Error::InvalidArgument(format!(
            "device ID `{id}` is not a slot of `{}` (slots are `{}` to `{}`)",
            pool.resource_name,
            pools::slot_id(pool, 0),
            pools::slot_id(pool, slots.saturating_sub(1)),
        )));
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let grants: Vec<Grant<'a>> = members
        .iter()
        .filter(|hca| {
            let usable = !hca.uverbs.is_empty();
            if !usable {
                log::log(
                    LogLevel::Warn,
                    &format!(
                        "{}: leaving {} ({}) out of an allocation: it has no uverbs device node",
                        pool.resource_name, hca.name, hca.address
                    ),
                );
            }
            usable
        })
        .map(|hca| Grant {
            hca,
            ports: hca.ports.iter().collect(),
        })
        .collect();
    if grants.is_empty() {
        return Err(Error::NotFound(format!(
            "`{}` has no usable HCA on this node now (selectors match none, or their device \
             nodes are missing)",
            pool.resource_name
        )));
    }
    Ok(grants)
}

/// Exclusive devices: exactly the HCAs (or ports) the IDs name, each at most once.
fn exclusive<'a>(pool: &Pool, items: &[Item<'a>], ids: &[String]) -> Result<Vec<Grant<'a>>, Error> {
    let mut grants: Vec<Grant<'a>> = Vec::new();
    for id in ids {
        // A pool has a handful of HCAs: a linear search is enough (and a `HashMap` would
        // make the component import a random seed).
        let item = items.iter().find(|i| i.id() == *id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "device ID `{id}` is not a device of `{}` on this node (the HCA may have been \
                 removed, unbound or moved to another pool)",
                pool.resource_name
            ))
        })?;
        let hca = item.hca();
        if hca.uverbs.is_empty() {
            return Err(Error::NotFound(format!(
                "device `{id}` of `{}`: {} has no uverbs device node",
                pool.resource_name, hca.name
            )));
        }
        let ports: Vec<&'a Port> = match item {
            Item::Hca(hca) => hca.ports.iter().collect(),
            Item::Port(_, port) => vec![port],
        };
        match grants.iter_mut().find(|g| g.hca.address == hca.address) {
            Some(grant) => {
                for port in ports {
                    if !grant.ports.iter().any(|p| p.number == port.number) {
                        grant.ports.push(port);
                    }
                }
            }
            None => grants.push(Grant { hca, ports }),
        }
    }
    Ok(grants)
}

fn container_allocation(pool: &Pool, grants: &[Grant], node: &Node) -> ContainerAllocation {
    let mut nodes: Vec<&str> = Vec::new();
    for grant in grants {
        nodes.extend(grant.hca.uverbs.iter().map(String::as_str));
        for port in &grant.ports {
            nodes.extend(port.umad.iter().map(String::as_str));
            nodes.extend(port.issm.iter().map(String::as_str));
        }
    }
    if !grants.is_empty() {
        match &node.rdma_cm {
            Some(cm) => nodes.push(cm),
            None => log::log(
                LogLevel::Warn,
                &format!(
                    "{}: {} does not exist; RDMA CM (librdmacm) will not work in the container",
                    pool.resource_name,
                    discover::RDMA_CM
                ),
            ),
        }
    }
    let mut devices: Vec<DeviceSpec> = Vec::with_capacity(nodes.len());
    for path in nodes {
        if !devices.iter().any(|d| d.host_path == path) {
            devices.push(alloc::device(path, "rw"));
        }
    }
    let envs = if grants.is_empty() {
        Vec::new()
    } else {
        let name = env_name(&pool.resource_name);
        let addresses: Vec<&str> = grants.iter().map(|g| g.hca.address.as_str()).collect();
        vec![
            (name.clone(), addresses.join(",")),
            (
                format!("{name}_INFO"),
                info(grants, node.rdma_cm.as_deref()),
            ),
        ]
    };
    ContainerAllocation {
        envs,
        devices,
        ..alloc::empty()
    }
}

/// `PCIDEVICE_` and the resource name in upper case with every other character as `_`
/// (`rdma/hca_shared_a` → `PCIDEVICE_RDMA_HCA_SHARED_A`), as the SR-IOV plug-in names it.
pub fn env_name(resource: &str) -> String {
    let mut name = String::from("PCIDEVICE_");
    name.extend(resource.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// `{"<pci address>": {"generic": {...}, "rdma": {...}, "net": {...}, "topology": {...}}}`:
/// the SR-IOV plug-in's info shape (string values only), keyed by PCI address in grant
/// order. Lists are comma-separated; an empty value is left out.
fn info(grants: &[Grant], rdma_cm: Option<&str>) -> String {
    let mut out = String::from("{");
    for (i, grant) in grants.iter().enumerate() {
        let hca = grant.hca;
        if i > 0 {
            out.push(',');
        }
        json::write_string(&mut out, &hca.address);
        out.push_str(":{\"generic\":");
        json::write_string_map(&mut out, &[("deviceID", hca.address.clone())]);
        let ports = &grant.ports;
        let of_ports = |f: &dyn Fn(&Port) -> Vec<String>| -> String {
            ports
                .iter()
                .flat_map(|p| f(p))
                .collect::<Vec<_>>()
                .join(",")
        };
        let rdma = [
            ("rdma_dev", hca.name.clone()),
            ("uverbs", hca.uverbs.join(",")),
            ("umad", of_ports(&|p| p.umad.clone())),
            ("issm", of_ports(&|p| p.issm.clone())),
            ("rdma_cm", rdma_cm.unwrap_or_default().to_string()),
            ("ports", of_ports(&|p| vec![p.number.to_string()])),
            ("link_layer", of_ports(&|p| vec![p.link_layer.clone()])),
        ];
        let rdma: Vec<(&str, String)> = rdma.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        out.push_str(",\"rdma\":");
        json::write_string_map(&mut out, &rdma);
        if !hca.net_devices.is_empty() {
            out.push_str(",\"net\":");
            json::write_string_map(&mut out, &[("interfaces", hca.net_devices.join(","))]);
        }
        if let Some(numa) = hca.numa_node {
            out.push_str(",\"topology\":");
            json::write_string_map(&mut out, &[("numa_node", numa.to_string())]);
        }
        out.push('}');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hca(n: u8, ports: u32) -> Hca {
        Hca {
            name: format!("mlx5_{n}"),
            address: format!("0000:{n:02x}:00.0"),
            vendor: 0x15b3,
            device: 0x101d,
            driver: Some("mlx5_core".into()),
            numa_node: Some(1),
            sysfs_path: format!("/sys/devices/pci0000:{n:02x}/0000:{n:02x}:00.0"),
            uverbs: vec![format!("/dev/infiniband/uverbs{}", 9 - n)],
            ports: (1..=ports)
                .map(|number| Port {
                    number,
                    link_layer: "Ethernet".into(),
                    problem: None,
                    umad: vec![format!("/dev/infiniband/umad{n}{number}")],
                    issm: Vec::new(),
                })
                .collect(),
            net_devices: vec![format!("ens{n}f0np0")],
        }
    }

    #[test]
    fn env_names_follow_the_sriov_plugin() {
        assert_eq!(env_name("rdma/hca_shared_a"), "PCIDEVICE_RDMA_HCA_SHARED_A");
        assert_eq!(env_name("nvidia.com/ib-0"), "PCIDEVICE_NVIDIA_COM_IB_0");
    }

    #[test]
    fn info_describes_each_grant_and_parses_as_json() {
        let (a, b) = (hca(1, 2), hca(2, 1));
        let grants = [
            Grant {
                hca: &a,
                ports: vec![&a.ports[1]],
            },
            Grant {
                hca: &b,
                ports: b.ports.iter().collect(),
            },
        ];
        let text = info(&grants, Some("/dev/infiniband/rdma_cm"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let first = &v["0000:01:00.0"];
        assert_eq!(first["generic"]["deviceID"], "0000:01:00.0");
        assert_eq!(first["rdma"]["rdma_dev"], "mlx5_1");
        assert_eq!(first["rdma"]["uverbs"], "/dev/infiniband/uverbs8");
        assert_eq!(first["rdma"]["umad"], "/dev/infiniband/umad12");
        assert_eq!(first["rdma"]["ports"], "2");
        assert_eq!(first["rdma"]["rdma_cm"], "/dev/infiniband/rdma_cm");
        assert!(first["rdma"].get("issm").is_none(), "{text}");
        assert_eq!(first["net"]["interfaces"], "ens1f0np0");
        assert_eq!(first["topology"]["numa_node"], "1");
        assert_eq!(v["0000:02:00.0"]["rdma"]["link_layer"], "Ethernet");
        assert_eq!(v.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn exclusive_grants_only_what_the_ids_name() {
        let a = hca(1, 2);
        let b = hca(2, 1);
        let items = [
            Item::Port(&a, &a.ports[0]),
            Item::Port(&a, &a.ports[1]),
            Item::Port(&b, &b.ports[0]),
        ];
        let pool = Pool {
            resource_name: "rdma/ports".into(),
            mode: Mode::Exclusive(crate::config::Unit::Port),
            selectors: Default::default(),
        };
        let ids = |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
        let grants =
            exclusive(&pool, &items, &ids(&["0000:01:00.0-p2", "0000:01:00.0-p1"])).unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(
            grants[0].ports.iter().map(|p| p.number).collect::<Vec<_>>(),
            [2, 1]
        );
        let node = Node {
            hcas: Vec::new(),
            rdma_cm: Some("/dev/infiniband/rdma_cm".into()),
        };
        let paths: Vec<String> = container_allocation(&pool, &grants, &node)
            .devices
            .into_iter()
            .map(|d| d.host_path)
            .collect();
        assert_eq!(
            paths,
            [
                "/dev/infiniband/uverbs8",
                "/dev/infiniband/umad12",
                "/dev/infiniband/umad11",
                "/dev/infiniband/rdma_cm"
            ]
        );
        let Err(Error::InvalidArgument(m)) = exclusive(&pool, &items, &ids(&["0000:01:00.0-p3"]))
        else {
            panic!("unknown port accepted");
        };
        assert!(m.contains("0000:01:00.0-p3"), "{m}");
    }
}
