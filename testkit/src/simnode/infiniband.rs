//! RDMA NICs (ConnectX-7 on InfiniBand): the `infiniband`, `infiniband_verbs`,
//! `infiniband_mad` and `net` class devices below the PCI function, their class links, and
//! the `/dev/infiniband` nodes. Formats follow the kernel's ib core and mlx5 drivers.

use std::io;

use super::SimNode;

/// Character-device major shared by umad, issm and uverbs.
const IB_MAJOR: u32 = 231;
const UVERBS_BASE_MINOR: u32 = 192;
const ISSM_BASE_MINOR: u32 = 64;

/// One simulated RDMA NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimNic {
    /// PCI address, `DDDD:BB:DD.F`.
    pub address: String,
    /// RDMA device name, `mlx5_<n>`.
    pub ib_device: String,
    /// K of `uverbs<K>`, `umad<K>`, `issm<K>` (need not equal n in `mlx5_<n>`).
    pub char_index: u32,
    /// IPoIB interface name, e.g. `ibp25s0`.
    pub netdev: String,
    pub numa_node: u32,
    /// `xxxx:xxxx:xxxx:xxxx`.
    pub node_guid: String,
}

impl SimNic {
    /// The NIC's character device nodes under `/dev/infiniband`.
    pub fn dev_nodes(&self) -> [String; 3] {
        let k = self.char_index;
        [
            format!("/dev/infiniband/uverbs{k}"),
            format!("/dev/infiniband/umad{k}"),
            format!("/dev/infiniband/issm{k}"),
        ]
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
    /// Writes the RDMA and network class devices of `nic`, whose PCI function is at the
    /// canonical node path `pci_dir`, plus their class links and device nodes.
    pub(crate) fn add_ib_devices(&self, nic: &SimNic, pci_dir: &str, lid: u32) -> io::Result<()> {
        let t = &self.tree;
        let ib = format!("{pci_dir}/infiniband/{}", nic.ib_device);
        let files = [
            ("node_type", "1: CA".to_string()),
            ("node_guid", nic.node_guid.clone()),
            ("sys_image_guid", nic.node_guid.clone()),
            ("fw_ver", "28.39.2048".into()),
            ("hca_type", "MT4129".into()),
            ("board_id", "MT_0000000970".into()),
            ("hw_rev", "0".into()),
            ("node_desc", format!("dgx-h100 {}", nic.ib_device)),
            ("ports/1/state", "4: ACTIVE".into()),
            ("ports/1/phys_state", "5: LinkUp".into()),
            ("ports/1/rate", "400 Gb/sec (4X NDR)".into()),
            ("ports/1/link_layer", "InfiniBand".into()),
            ("ports/1/lid", format!("0x{lid:x}")),
            ("ports/1/sm_lid", "0x1".into()),
            ("ports/1/lid_mask_count", "0".into()),
            ("ports/1/sm_sl", "0".into()),
            ("ports/1/cap_mask", format!("0x{:08x}", 0xa651_e848_u32)),
            ("ports/1/pkeys/0", "0xffff".into()),
            (
                "ports/1/gids/0",
                format!("fe80:0000:0000:0000:{}", nic.node_guid),
            ),
        ];
        for (name, value) in files {
            t.write(&format!("{ib}/{name}"), &format!("{value}\n"))?;
        }
        t.link(&format!("{ib}/device"), pci_dir)?;
        t.link(&format!("/sys/class/infiniband/{}", nic.ib_device), &ib)?;

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

        // One umad and one issm per port; these NICs have one port.
        for (name, minor) in [
            (format!("umad{k}"), k),
            (format!("issm{k}"), ISSM_BASE_MINOR + k),
        ] {
            let dir = format!("{pci_dir}/infiniband_mad/{name}");
            t.write(&format!("{dir}/ibdev"), &format!("{}\n", nic.ib_device))?;
            t.write(&format!("{dir}/port"), "1\n")?;
            t.write(&format!("{dir}/dev"), &format!("{IB_MAJOR}:{minor}\n"))?;
            t.link(&format!("{dir}/device"), pci_dir)?;
            t.link(&format!("/sys/class/infiniband_mad/{name}"), &dir)?;
        }
        t.write("/sys/class/infiniband_mad/abi_version", "5\n")?;

        // IPoIB: type 32 (ARPHRD_INFINIBAND); the 20-byte address ends in the port GUID.
        let net = format!("{pci_dir}/net/{}", nic.netdev);
        let mut address = String::from("00:00:10:49:fe:80:00:00:00:00:00:00");
        let guid_hex: Vec<char> = nic.node_guid.chars().filter(|c| *c != ':').collect();
        for byte in guid_hex.chunks(2) {
            address.push(':');
            address.extend(byte);
        }
        let net_files = [
            ("type", "32".to_string()),
            ("operstate", "up".into()),
            ("mtu", "4092".into()),
            ("address", address),
        ];
        for (name, value) in net_files {
            t.write(&format!("{net}/{name}"), &format!("{value}\n"))?;
        }
        t.link(&format!("{net}/device"), pci_dir)?;
        t.link(&format!("/sys/class/net/{}", nic.netdev), &net)?;

        for node in nic.dev_nodes() {
            self.add_dev_node(&node)?;
        }
        Ok(())
    }
}
