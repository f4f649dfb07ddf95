//! RDMA NICs (ConnectX-7 on InfiniBand, ConnectX-6 Dx on Ethernet/RoCE): the
//! `infiniband`, `infiniband_verbs`, `infiniband_mad` and `net` class devices below the PCI
//! function, their class links, and the `/dev/infiniband` nodes. Formats follow the
//! kernel's ib core and mlx5 drivers.
//!
//! Mutators for the situations a plug-in must survive: a link going down and coming back,
//! character-device indices that do not follow `mlx5_N`, and a node without `issm` nodes.

use std::io;

use super::SimNode;
use super::pci::{PciFunction, root_bus_dir};

/// Character-device major shared by umad, issm and uverbs.
const IB_MAJOR: u32 = 231;
const UVERBS_BASE_MINOR: u32 = 192;
const ISSM_BASE_MINOR: u32 = 64;

/// Port attributes of a link that carries traffic, and of one that lost its cable.
const PORT_UP: (&str, &str) = ("4: ACTIVE", "5: LinkUp");
const PORT_DOWN: (&str, &str) = ("1: DOWN", "2: Polling");

/// One simulated RDMA NIC (one RDMA device, `mlx5_<n>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimNic {
    /// PCI address of the function the RDMA device belongs to, `DDDD:BB:DD.F`.
    pub address: String,
    /// RDMA device name, `mlx5_<n>`.
    pub ib_device: String,
    /// K of `uverbs<K>` (need not equal n in `mlx5_<n>`); on the DGX fixture also the
    /// index of port 1's `umad<K>` and `issm<K>`.
    pub char_index: u32,
    /// Net interface of port 1, e.g. `ibp25s0` (IPoIB) or `enp65s0f0np0` (RoCE).
    pub netdev: String,
    pub numa_node: u32,
    /// `xxxx:xxxx:xxxx:xxxx`.
    pub node_guid: String,
    /// `InfiniBand` or `Ethernet` (RoCE), the ports' `link_layer`.
    pub link_layer: String,
    /// The RDMA device's ports, in order.
    pub ports: Vec<SimPort>,
    /// Whether the ports have `issm` nodes (false after [`SimNode::remove_issm`]).
    pub issm: bool,
}

/// One port of a simulated RDMA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimPort {
    /// 1-based port number.
    pub number: u32,
    /// K of this port's `umad<K>` and `issm<K>`.
    pub umad_index: u32,
    /// The net interface carried by this port.
    pub netdev: String,
}

impl SimNic {
    /// The NIC's uverbs node and port 1's umad and issm nodes (as on the DGX fixture,
    /// whose NICs have one port and issm nodes).
    pub fn dev_nodes(&self) -> [String; 3] {
        let k = self.ports.first().map_or(self.char_index, |p| p.umad_index);
        [
            self.uverbs_node(),
            format!("/dev/infiniband/umad{k}"),
            format!("/dev/infiniband/issm{k}"),
        ]
    }

    /// `/dev/infiniband/uverbs<K>`.
    pub fn uverbs_node(&self) -> String {
        format!("/dev/infiniband/uverbs{}", self.char_index)
    }

    /// The umad node and (when the node has them) the issm node of one port.
    pub fn port_nodes(&self, port: &SimPort) -> Vec<String> {
        let k = port.umad_index;
        let mut nodes = vec![format!("/dev/infiniband/umad{k}")];
        if self.issm {
            nodes.push(format!("/dev/infiniband/issm{k}"));
        }
        nodes
    }

    /// Every device node of the NIC: uverbs, then each port's umad (and issm).
    pub fn all_dev_nodes(&self) -> Vec<String> {
        let mut nodes = vec![self.uverbs_node()];
        for port in &self.ports {
            nodes.extend(self.port_nodes(port));
        }
        nodes
    }
}

/// How the two ports of a dual-port ConnectX-6 Dx in Ethernet mode appear to RDMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RocePorts {
    /// The mlx5 default: each port's PCI function has an RDMA device with one port.
    PerFunction,
    /// Dual-port RoCE (affiliated ports): one RDMA device with ports 1 and 2 on function
    /// 0; the second port's net interface stays on function 1.
    OneDevice,
}

/// What differs between adapter models in their RDMA device's attributes.
pub(crate) struct Model {
    pub hca_type: &'static str,
    pub fw_ver: &'static str,
    pub board_id: &'static str,
    pub rate: &'static str,
    pub node_desc: String,
}

impl Model {
    /// ConnectX-7 NDR (DGX H100).
    pub(crate) fn connectx7(ib_device: &str) -> Model {
        Model {
            hca_type: "MT4129",
            fw_ver: "28.39.2048",
            board_id: "MT_0000000970",
            rate: "400 Gb/sec (4X NDR)",
            node_desc: format!("dgx-h100 {ib_device}"),
        }
    }

    /// ConnectX-6 Dx at 100 GbE.
    fn connectx6_dx(ib_device: &str) -> Model {
        Model {
            hca_type: "MT4125",
            fw_ver: "22.39.2048",
            board_id: "MT_0000000359",
            rate: "100 Gb/sec (4X EDR)",
            node_desc: format!("dgx-h100 {ib_device}"),
        }
    }
}

/// `%04x:%04x:%04x:%04x`, as `node_guid` prints a GUID.
pub(crate) fn guid(value: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        value >> 48,
        (value >> 32) & 0xffff,
        (value >> 16) & 0xffff,
        value & 0xffff
    )
}

impl SimNode {
    /// Writes the RDMA class devices of `nic`, whose PCI function is at the canonical
    /// node path `pci_dir`, plus their class links and device nodes (not its net
    /// interfaces: see [`SimNode::add_ipoib_netdev`] and [`SimNode::add_roce_netdev`]).
    pub(crate) fn add_ib_devices(
        &self,
        nic: &SimNic,
        pci_dir: &str,
        lid: u32,
        model: &Model,
    ) -> io::Result<()> {
        let t = &self.tree;
        let ib = format!("{pci_dir}/infiniband/{}", nic.ib_device);
        let roce = nic.link_layer == "Ethernet";
        let mut files = vec![
            ("node_type".to_string(), "1: CA".to_string()),
            ("node_guid".into(), nic.node_guid.clone()),
            ("sys_image_guid".into(), nic.node_guid.clone()),
            ("fw_ver".into(), model.fw_ver.into()),
            ("hca_type".into(), model.hca_type.into()),
            ("board_id".into(), model.board_id.into()),
            ("hw_rev".into(), "0".into()),
            ("node_desc".into(), model.node_desc.clone()),
        ];
        for port in &nic.ports {
            let p = format!("ports/{}", port.number);
            let (lid, sm_lid) = if roce {
                ("0x0".to_string(), "0x0")
            } else {
                (format!("0x{:x}", lid + port.number - 1), "0x1")
            };
            let gid = if roce {
                format!("fe80:0000:0000:0000:{}", roce_interface_id(&nic.node_guid))
            } else {
                format!("fe80:0000:0000:0000:{}", nic.node_guid)
            };
            files.extend([
                (format!("{p}/state"), PORT_UP.0.into()),
                (format!("{p}/phys_state"), PORT_UP.1.into()),
                (format!("{p}/rate"), model.rate.into()),
                (format!("{p}/link_layer"), nic.link_layer.clone()),
                (format!("{p}/lid"), lid),
                (format!("{p}/sm_lid"), sm_lid.into()),
                (format!("{p}/lid_mask_count"), "0".into()),
                (format!("{p}/sm_sl"), "0".into()),
                (
                    format!("{p}/cap_mask"),
                    format!("0x{:08x}", 0xa651_e848_u32),
                ),
                (format!("{p}/pkeys/0"), "0xffff".into()),
                (format!("{p}/gids/0"), gid),
            ]);
            // RoCE GIDs name their net interface; IB ports have none (the read fails).
            if roce {
                files.extend([
                    (format!("{p}/gid_attrs/ndevs/0"), port.netdev.clone()),
                    (format!("{p}/gid_attrs/types/0"), "IB/RoCE v1".into()),
                    (format!("{p}/gid_attrs/ndevs/1"), port.netdev.clone()),
                    (format!("{p}/gid_attrs/types/1"), "RoCE v2".into()),
                ]);
            }
        }
        for (name, value) in files {
            t.write(&format!("{ib}/{name}"), &format!("{value}\n"))?;
        }
        t.link(&format!("{ib}/device"), pci_dir)?;
        t.link(&format!("/sys/class/infiniband/{}", nic.ib_device), &ib)?;
        self.add_char_devices(nic, pci_dir)
    }

    /// The uverbs entry of `nic` and the umad (and issm) entries of its ports: class
    /// directories below the PCI function, class links and device nodes.
    fn add_char_devices(&self, nic: &SimNic, pci_dir: &str) -> io::Result<()> {
        let t = &self.tree;
        let k = nic.char_index;
        let uverbs = format!("{pci_dir}/infiniband_verbs/uverbs{k}");
        t.write(&format!("{uverbs}/ibdev"), &format!("{}\n", nic.ib_device))?;
        t.write(
            &format!("{uverbs}/dev"),
            &format!("{IB_MAJOR}:{}\n", UVERBS_BASE_MINOR + k),
        )?;
        t.write(&format!("{uverbs}/abi_version"), "1\n")?;
        t.link(&format!("{uverbs}/device"), pci_dir)?;
        t.link(&format!("/sys/class/infiniband_verbs/uverbs{k}"), &uverbs)?;
        t.write("/sys/class/infiniband_verbs/abi_version", "6\n")?;
        self.add_dev_node(&nic.uverbs_node())?;

        // One umad and one issm per port.
        for port in &nic.ports {
            let k = port.umad_index;
            let mut entries = vec![(format!("umad{k}"), k)];
            if nic.issm {
                entries.push((format!("issm{k}"), ISSM_BASE_MINOR + k));
            }
            for (name, minor) in entries {
                let dir = format!("{pci_dir}/infiniband_mad/{name}");
                t.write(&format!("{dir}/ibdev"), &format!("{}\n", nic.ib_device))?;
                t.write(&format!("{dir}/port"), &format!("{}\n", port.number))?;
                t.write(&format!("{dir}/dev"), &format!("{IB_MAJOR}:{minor}\n"))?;
                t.link(&format!("{dir}/device"), pci_dir)?;
                t.link(&format!("/sys/class/infiniband_mad/{name}"), &dir)?;
                self.add_dev_node(&format!("/dev/infiniband/{name}"))?;
            }
        }
        t.write("/sys/class/infiniband_mad/abi_version", "5\n")
    }

    /// Removes what [`add_char_devices`](Self::add_char_devices) wrote for `nic`, each
    /// entry in one step (class link first, so a reader never follows a dangling one).
    fn remove_char_devices(&self, nic: &SimNic) -> io::Result<()> {
        let pci_dir = self.pci_dir(&nic.address)?;
        let mut entries = vec![("infiniband_verbs", format!("uverbs{}", nic.char_index))];
        for port in &nic.ports {
            entries.push(("infiniband_mad", format!("umad{}", port.umad_index)));
            entries.push(("infiniband_mad", format!("issm{}", port.umad_index)));
        }
        for (class, name) in entries {
            self.tree
                .remove_file(&format!("/sys/class/{class}/{name}"))?;
            self.tree.remove_dir(&format!("{pci_dir}/{class}/{name}"))?;
            self.remove_dev_node(&format!("/dev/infiniband/{name}"))?;
        }
        Ok(())
    }

    /// An IPoIB interface (type 32, ARPHRD_INFINIBAND) of the function at `pci_dir`; its
    /// 20-byte address ends in the port GUID.
    pub(crate) fn add_ipoib_netdev(&self, pci_dir: &str, name: &str, guid: &str) -> io::Result<()> {
        let mut address = String::from("00:00:10:49:fe:80:00:00:00:00:00:00");
        let guid_hex: Vec<char> = guid.chars().filter(|c| *c != ':').collect();
        for byte in guid_hex.chunks(2) {
            address.push(':');
            address.extend(byte);
        }
        self.add_netdev(pci_dir, name, "32", "4092", &address)
    }

    /// An Ethernet interface (type 1) of the function at `pci_dir`.
    fn add_roce_netdev(&self, pci_dir: &str, name: &str, mac: &str) -> io::Result<()> {
        self.add_netdev(pci_dir, name, "1", "1500", mac)
    }

    fn add_netdev(
        &self,
        pci_dir: &str,
        name: &str,
        kind: &str,
        mtu: &str,
        address: &str,
    ) -> io::Result<()> {
        let t = &self.tree;
        let net = format!("{pci_dir}/net/{name}");
        let net_files = [
            ("type", kind),
            ("operstate", "up"),
            ("mtu", mtu),
            ("address", address),
        ];
        for (file, value) in net_files {
            t.write(&format!("{net}/{file}"), &format!("{value}\n"))?;
        }
        t.link(&format!("{net}/device"), pci_dir)?;
        t.link(&format!("/sys/class/net/{name}"), &net)
    }

    /// The simulated NIC whose RDMA device is `ib_device`.
    pub fn nic(&self, ib_device: &str) -> io::Result<&SimNic> {
        self.nics
            .iter()
            .find(|n| n.ib_device == ib_device)
            .ok_or_else(|| {
                super::not_found(format!("no RDMA device {ib_device} in the simulated node"))
            })
    }

    /// Adds a dual-port ConnectX-6 Dx (`15b3:101d`, class `0x020000`) in Ethernet (RoCE)
    /// mode on its own root bus `root_bus`: a root port `R:01.0` and the adapter's two
    /// functions `R+1:00.0` and `R+1:00.1`, driver `mlx5_core`, net interfaces
    /// `enp<R+1>s0f0np0` and `enp<R+1>s0f1np1`. Its RDMA devices are named `mlx5_<n>` after
    /// the NICs already there, with the next free character-device indices. Returns the
    /// NICs added.
    pub fn add_connectx6_dx_roce(
        &mut self,
        root_bus: u8,
        numa: u32,
        ports: RocePorts,
    ) -> io::Result<Vec<SimNic>> {
        let bus = root_bus.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "root bus 0xff has no bus below it",
            )
        })?;
        let root_port = format!("0000:{root_bus:02x}:01.0");
        let functions = [0_u8, 1].map(|f| format!("0000:{bus:02x}:00.{f}"));
        for address in std::iter::once(&root_port).chain(&functions) {
            if self.pci_dir(address).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("PCI function {address} already exists in the simulated node"),
                ));
            }
        }
        let group = |bus: u8, f: u8| Some(0x1000 + (u32::from(bus) << 3) + u32::from(f));
        let rp = PciFunction {
            revision: 0x04,
            numa_node: Some(numa),
            driver: Some("pcieport".into()),
            iommu_group: group(root_bus, 7),
            ..PciFunction::new(&root_port, 0x8086, 0x352a, 0x06_04_00)
        };
        let rp_dir = self.add_pci_function(&root_bus_dir(&root_port), &rp)?;
        let mut dirs = Vec::new();
        for (f, address) in (0_u8..).zip(&functions) {
            let function = PciFunction {
                subsystem_device: 0x0016,
                numa_node: Some(numa),
                driver: Some("mlx5_core".into()),
                iommu_group: group(bus, f),
                link_speed: "16.0 GT/s PCIe".into(),
                ..PciFunction::new(address, 0x15b3, 0x101d, 0x02_00_00)
            };
            dirs.push(self.add_pci_function(&rp_dir, &function)?);
        }

        let netdevs = [0_u8, 1].map(|f| format!("enp{bus}s0f{f}np{f}"));
        let mac = |f: u8| format!("b8:59:9f:d4:{bus:02x}:{f:02x}");
        for (f, (dir, name)) in (0_u8..).zip(dirs.iter().zip(&netdevs)) {
            self.add_roce_netdev(dir, name, &mac(f))?;
        }

        let mut next_uverbs = self
            .nics
            .iter()
            .map(|n| n.char_index + 1)
            .max()
            .unwrap_or(0);
        let mut next_umad = self
            .nics
            .iter()
            .flat_map(|n| n.ports.iter().map(|p| p.umad_index + 1))
            .max()
            .unwrap_or(0);
        let mut next_name = self.nics.len();
        let mut nic = |function: usize, numbers: &[u32]| {
            let ib_device = format!("mlx5_{next_name}");
            next_name += 1;
            let char_index = next_uverbs;
            next_uverbs += 1;
            let ports = numbers
                .iter()
                .map(|&number| {
                    let umad_index = next_umad;
                    next_umad += 1;
                    SimPort {
                        number,
                        umad_index,
                        netdev: netdevs[function + number as usize - 1].clone(),
                    }
                })
                .collect::<Vec<_>>();
            SimNic {
                address: functions[function].clone(),
                ib_device,
                char_index,
                netdev: ports[0].netdev.clone(),
                numa_node: numa,
                node_guid: guid(0xb859_9f03_00d4_0000 + (u64::from(bus) << 8) + function as u64),
                link_layer: "Ethernet".into(),
                ports,
                issm: true,
            }
        };
        let added = match ports {
            RocePorts::PerFunction => vec![nic(0, &[1]), nic(1, &[1])],
            RocePorts::OneDevice => vec![nic(0, &[1, 2])],
        };
        for n in &added {
            let model = Model::connectx6_dx(&n.ib_device);
            let dir = self.pci_dir(&n.address)?;
            self.add_ib_devices(n, &dir, 0, &model)?;
        }
        self.nics.extend(added.iter().cloned());
        Ok(added)
    }

    /// Sets a port's `state` and `phys_state` texts, e.g. `"2: INIT"`, `"5: LinkUp"`.
    pub fn set_port_state(
        &self,
        ib_device: &str,
        port: u32,
        state: &str,
        phys_state: &str,
    ) -> io::Result<()> {
        let nic = self.nic(ib_device)?;
        if !nic.ports.iter().any(|p| p.number == port) {
            return Err(super::not_found(format!(
                "{ib_device} has no port {port} in the simulated node"
            )));
        }
        let dir = format!("/sys/class/infiniband/{ib_device}/ports/{port}");
        self.tree
            .write(&format!("{dir}/state"), &format!("{state}\n"))?;
        self.tree
            .write(&format!("{dir}/phys_state"), &format!("{phys_state}\n"))
    }

    /// Takes a port's link down (`1: DOWN`, `2: Polling`: the cable was pulled) or brings
    /// it back up (`4: ACTIVE`, `5: LinkUp`); its net interface's `operstate` follows.
    pub fn set_link(&self, ib_device: &str, port: u32, up: bool) -> io::Result<()> {
        let (state, phys) = if up { PORT_UP } else { PORT_DOWN };
        self.set_port_state(ib_device, port, state, phys)?;
        let nic = self.nic(ib_device)?;
        if let Some(p) = nic.ports.iter().find(|p| p.number == port) {
            let operstate = if up { "up\n" } else { "down\n" };
            self.tree
                .write(&format!("/sys/class/net/{}/operstate", p.netdev), operstate)?;
        }
        Ok(())
    }

    /// Removes every `issm` node: the class entries and `/dev/infiniband/issm*` (as on
    /// nodes where the peer plug-in failed with "RDMA device issm not found").
    pub fn remove_issm(&mut self) -> io::Result<()> {
        for nic in &mut self.nics {
            let pci_dir = self
                .functions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&nic.address)
                .cloned()
                .ok_or_else(|| super::not_found(format!("no PCI function {}", nic.address)))?;
            for port in &nic.ports {
                let name = format!("issm{}", port.umad_index);
                self.tree
                    .remove_file(&format!("/sys/class/infiniband_mad/{name}"))?;
                self.tree
                    .remove_dir(&format!("{pci_dir}/infiniband_mad/{name}"))?;
                let dev = format!("/dev/infiniband/{name}");
                self.tree.remove_file(&dev)?;
            }
            nic.issm = false;
        }
        Ok(())
    }

    /// Renumbers every NIC's character devices in reverse: of n NICs, the one listed
    /// i-th gets `uverbs<n-1-i>`, and umad/issm indices are handed out again in that
    /// reversed order. With 11 or more NICs, `mlx5_1`'s nodes then carry index 10 and
    /// `mlx5_10`'s index 1, which only an exact `ibdev` match tells apart.
    pub fn reverse_char_indices(&mut self) -> io::Result<()> {
        for nic in &self.nics {
            self.remove_char_devices(nic)?;
        }
        let count = self.nics.len();
        let mut next_umad = 0;
        for i in (0..count).rev() {
            let nic = &mut self.nics[i];
            nic.char_index = u32::try_from(count - 1 - i).unwrap_or(u32::MAX);
            for port in &mut nic.ports {
                port.umad_index = next_umad;
                next_umad += 1;
            }
        }
        for nic in &self.nics {
            let pci_dir = self.pci_dir(&nic.address)?;
            self.add_char_devices(nic, &pci_dir)?;
        }
        Ok(())
    }
}

/// The modified EUI-64 interface ID a RoCE GID derives from the port's MAC address; the
/// simulated MAC is derived from the GUID's last bytes.
fn roce_interface_id(node_guid: &str) -> String {
    let hex: String = node_guid.chars().filter(|c| *c != ':').collect();
    let tail = &hex[hex.len().saturating_sub(6)..];
    format!("ba59:9fff:fe{}:{}", &tail[..2], &tail[2..])
}
