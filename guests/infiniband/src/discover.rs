//! Finding the node's HCAs: RDMA devices under `/sys/class/infiniband`, the PCI function
//! behind each (`device` link), their ports, their character devices and net interfaces.
//!
//! Character devices are matched to RDMA devices by the exact content of each class
//! entry's `ibdev` file: `uverbs<K>`/`umad<K>`/`issm<K>` need not have K equal to N in
//! `mlx5_N`, and a substring match would confuse `mlx5_1` with `mlx5_10`.

use crate::health;
use wdp_guest_sdk::attr::list_or_empty;
use wdp_guest_sdk::dev::present;
use wdp_guest_sdk::error::message;
use wdp_guest_sdk::host::sysfs;
use wdp_guest_sdk::log::debug;
use wdp_guest_sdk::pci::{self, Filter};
use wdp_guest_sdk::types::{Error, PciDevice};

const CLASS_INFINIBAND: &str = "/sys/class/infiniband";
const CLASS_VERBS: &str = "/sys/class/infiniband_verbs";
const CLASS_MAD: &str = "/sys/class/infiniband_mad";
/// Where udev names the ib core's character devices.
const DEV_DIR: &str = "/dev/infiniband";
/// The RDMA connection manager's node: one per node, shared by every HCA.
pub const RDMA_CM: &str = "/dev/infiniband/rdma_cm";

/// Ethernet and InfiniBand controllers (PCI class/subclass `0x0200` and `0x0207`): the
/// same ConnectX part shows either, depending on its ports' link-type firmware setting.
const NETWORK: Filter = Filter::new().classes(&[0x0200, 0x0207]);

/// What the node offers for RDMA right now.
#[derive(Clone, Debug, Default)]
pub struct Node {
    /// In RDMA device name order.
    pub hcas: Vec<Hca>,
    /// `/dev/infiniband/rdma_cm` when it exists.
    pub rdma_cm: Option<String>,
}

/// One RDMA device (an HCA, or one PCI function of a multi-function adapter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hca {
    /// RDMA device name, e.g. `mlx5_0`.
    pub name: String,
    /// PCI address of the function, `dddd:bb:dd.f`.
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    pub driver: Option<String>,
    pub numa_node: Option<u32>,
    /// Canonical sysfs directory of the function; a common prefix means a common switch.
    pub sysfs_path: String,
    /// `/dev/infiniband/uverbs<K>` nodes that exist (normally exactly one).
    pub uverbs: Vec<String>,
    pub ports: Vec<Port>,
    /// Net interfaces of the function and of its ports, sorted.
    pub net_devices: Vec<String>,
}

/// One port of an HCA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub number: u32,
    /// `InfiniBand` or `Ethernet`.
    pub link_layer: String,
    /// Why the port cannot carry traffic; none when it is up.
    pub problem: Option<String>,
    /// `/dev/infiniband/umad<K>` and `issm<K>` nodes of this port that exist.
    pub umad: Vec<String>,
    pub issm: Vec<String>,
}

impl Hca {
    /// Why the whole HCA cannot be used; none when it can.
    pub fn problem(&self) -> Option<String> {
        if self.uverbs.is_empty() {
            return Some(format!(
                "no uverbs device node for {} under {DEV_DIR}",
                self.name
            ));
        }
        if self.ports.is_empty() {
            return Some(format!("{} has no ports in sysfs", self.name));
        }
        self.ports.iter().find_map(|p| {
            p.problem
                .as_ref()
                .map(|why| format!("port {}: {why}", p.number))
        })
    }
}

/// One entry of `/sys/class/infiniband_verbs` or `/sys/class/infiniband_mad`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharDev {
    /// Class entry name, which is also the node's name under `/dev/infiniband`.
    pub name: String,
    /// Content of its `ibdev` file without the newline.
    pub ibdev: String,
    /// Content of its `port` file (umad and issm only).
    pub port: Option<u32>,
}

impl CharDev {
    pub fn node_path(&self) -> String {
        format!("{DEV_DIR}/{}", self.name)
    }
}

/// The class entries that belong to `ibdev` (exact match) and, when given, to `port`,
/// whose names start with `prefix`.
pub fn belonging<'a>(
    entries: &'a [CharDev],
    prefix: &'a str,
    ibdev: &'a str,
    port: Option<u32>,
) -> impl Iterator<Item = &'a CharDev> + 'a {
    entries.iter().filter(move |e| {
        e.name
            .strip_prefix(prefix)
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
            && e.ibdev == ibdev
            && (port.is_none() || e.port == port)
    })
}

/// Takes a fresh look at the node.
pub fn node() -> Result<Node, Error> {
    let functions = pci::list_all()?;
    let names = list_or_empty(CLASS_INFINIBAND)?;
    let verbs = class_entries(CLASS_VERBS, &["uverbs"])?;
    let mad = class_entries(CLASS_MAD, &["umad", "issm"])?;
    let mut hcas = Vec::with_capacity(names.len());
    for name in names {
        if let Some(hca) = hca(&name, &functions, &verbs, &mad)? {
            hcas.push(hca);
        }
    }
    Ok(Node {
        hcas,
        rdma_cm: present(RDMA_CM).then(|| RDMA_CM.to_string()),
    })
}

/// One RDMA device, or none when it is not on a network-class PCI function.
fn hca(
    name: &str,
    functions: &[PciDevice],
    verbs: &[CharDev],
    mad: &[CharDev],
) -> Result<Option<Hca>, Error> {
    let dir = format!("{CLASS_INFINIBAND}/{name}");
    let link = match sysfs::read_link(&format!("{dir}/device")) {
        Ok(link) => link,
        Err(e) => {
            debug(&format!(
                "skipping RDMA device {name}: no device link: {}",
                message(e)
            ));
            return Ok(None);
        }
    };
    let address = link.rsplit('/').next().unwrap_or_default();
    // Sub-functions and software devices (rxe, siw) are not PCI functions.
    let Some(f) = functions.iter().find(|f| f.address == address) else {
        debug(&format!(
            "skipping RDMA device {name}: its device `{link}` is not a PCI function"
        ));
        return Ok(None);
    };
    if !NETWORK.matches(f) {
        debug(&format!(
            "skipping RDMA device {name}: {address} has PCI class 0x{:06x}, not a network controller",
            f.class
        ));
        return Ok(None);
    }
    let mut ports = Vec::new();
    let mut net_devices = list_or_empty(&format!("{}/net", f.sysfs_path))?;
    for entry in list_or_empty(&format!("{dir}/ports"))? {
        let Ok(number) = entry.parse::<u32>() else {
            continue;
        };
        let (port, net_device) = port(&dir, name, number, mad);
        ports.push(port);
        net_devices.extend(net_device);
    }
    // Unstable sorts: each stable-sort instantiation costs kilobytes in the component.
    ports.sort_unstable_by_key(|p| p.number);
    net_devices.sort_unstable();
    net_devices.dedup();
    Ok(Some(Hca {
        name: name.to_string(),
        address: f.address.clone(),
        vendor: f.vendor,
        device: f.device,
        driver: f.driver.clone(),
        numa_node: f.numa_node,
        sysfs_path: f.sysfs_path.clone(),
        uverbs: present_nodes(belonging(verbs, "uverbs", name, None)),
        ports,
        net_devices,
    }))
}

/// One port and the net interface it carries (RoCE ports name theirs in the GID table).
fn port(dir: &str, ibdev: &str, number: u32, mad: &[CharDev]) -> (Port, Option<String>) {
    let at = format!("{dir}/ports/{number}");
    let attribute = |name: &str| sysfs::read_file(&format!("{at}/{name}"));
    let problem = match (attribute("state"), attribute("phys_state")) {
        (Ok(state), Ok(phys)) => health::port_problem(&state, &phys),
        (Err(e), _) | (_, Err(e)) => Some(format!("cannot read its state: {}", message(e))),
    };
    let link_layer = attribute("link_layer")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // InfiniBand ports refuse this read (EINVAL): they have no net device per GID.
    let net_device = attribute("gid_attrs/ndevs/0")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let port = Port {
        number,
        link_layer,
        problem,
        umad: present_nodes(belonging(mad, "umad", ibdev, Some(number))),
        issm: present_nodes(belonging(mad, "issm", ibdev, Some(number))),
    };
    (port, net_device)
}

/// The entries of a char-device class directory whose names start with one of
/// `prefixes`; an entry whose `ibdev` cannot be read is left out (logged).
fn class_entries(dir: &str, prefixes: &[&str]) -> Result<Vec<CharDev>, Error> {
    let mut entries = Vec::new();
    for name in list_or_empty(dir)? {
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let ibdev = match sysfs::read_file(&format!("{dir}/{name}/ibdev")) {
            Ok(text) => text.trim_end_matches('\n').to_string(),
            Err(e) => {
                debug(&format!(
                    "skipping {dir}/{name}: cannot read ibdev: {}",
                    message(e)
                ));
                continue;
            }
        };
        let port = sysfs::read_file(&format!("{dir}/{name}/port"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        entries.push(CharDev { name, ibdev, port });
    }
    Ok(entries)
}

fn present_nodes<'a>(entries: impl Iterator<Item = &'a CharDev>) -> Vec<String> {
    entries
        .map(CharDev::node_path)
        .filter(|path| present(path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ibdev: &str, port: Option<u32>) -> CharDev {
        CharDev {
            name: name.into(),
            ibdev: ibdev.into(),
            port,
        }
    }

    #[test]
    fn matches_ibdev_exactly_not_by_index_or_substring() {
        let verbs = [
            entry("uverbs0", "mlx5_10", None),
            entry("uverbs1", "mlx5_1", None),
            entry("uverbs10", "mlx5_0", None),
        ];
        let names = |ibdev| -> Vec<&str> {
            belonging(&verbs, "uverbs", ibdev, None)
                .map(|e| e.name.as_str())
                .collect()
        };
        assert_eq!(names("mlx5_1"), ["uverbs1"]);
        assert_eq!(names("mlx5_10"), ["uverbs0"]);
        assert_eq!(names("mlx5_0"), ["uverbs10"]);
        assert!(names("mlx5_").is_empty());
    }

    #[test]
    fn mad_entries_match_by_port_and_kind() {
        let mad = [
            entry("umad0", "mlx5_0", Some(1)),
            entry("umad1", "mlx5_0", Some(2)),
            entry("issm0", "mlx5_0", Some(1)),
            entry("issm1", "mlx5_0", Some(2)),
            entry("umad2", "mlx5_1", Some(1)),
            entry("umadx", "mlx5_0", Some(1)),
        ];
        let names = |prefix, port| -> Vec<&str> {
            belonging(&mad, prefix, "mlx5_0", port)
                .map(|e| e.name.as_str())
                .collect()
        };
        assert_eq!(names("umad", Some(2)), ["umad1"]);
        assert_eq!(names("issm", Some(1)), ["issm0"]);
        assert_eq!(names("umad", None), ["umad0", "umad1"]);
        assert_eq!(
            entry("issm3", "x", None).node_path(),
            "/dev/infiniband/issm3"
        );
    }

    fn hca(ports: Vec<Option<&str>>, uverbs: bool) -> Hca {
        Hca {
            name: "mlx5_0".into(),
            address: "0000:19:00.0".into(),
            vendor: 0x15b3,
            device: 0x1021,
            driver: Some("mlx5_core".into()),
            numa_node: Some(0),
            sysfs_path: "/sys/devices/pci0000:15/0000:15:01.0/0000:19:00.0".into(),
            uverbs: if uverbs {
                vec!["/dev/infiniband/uverbs0".into()]
            } else {
                Vec::new()
            },
            ports: (1..)
                .zip(ports)
                .map(|(number, problem)| Port {
                    number,
                    link_layer: "InfiniBand".into(),
                    problem: problem.map(String::from),
                    umad: Vec::new(),
                    issm: Vec::new(),
                })
                .collect(),
            net_devices: Vec::new(),
        }
    }

    #[test]
    fn an_hca_needs_its_uverbs_node_and_every_port_up() {
        assert_eq!(hca(vec![None, None], true).problem(), None);
        assert!(hca(vec![None], false).problem().unwrap().contains("uverbs"));
        assert!(hca(vec![], true).problem().unwrap().contains("no ports"));
        let down = hca(vec![None, Some("down")], true).problem().unwrap();
        assert!(down.starts_with("port 2: down"), "{down}");
    }
}
