//! The DGX H100-like layout: two NUMA nodes, eight H100 SXM5 GPUs each paired with a
//! ConnectX-7 behind its own PCIe switch, and four NVSwitches.
//!
//! Each pair hangs off its own root bus `R`: root port `R:01.0` → switch upstream port
//! `R+1:00.0` → downstream ports `R+2:00.0` (GPU on bus `R+3`) and `R+2:01.0` (NIC on
//! bus `R+4`). IOMMU groups are numbered in creation order, one per function.

use std::io;
use std::path::Path;

use super::SimNode;
use super::infiniband::{Model, SimNic, SimPort, guid};
use super::nvidia::{SimGpu, uuid};
use super::pci::{PciFunction, root_bus_dir};

pub(crate) const H100_MODEL: &str = "NVIDIA H100 80GB HBM3";
/// `/sys/class/dmi/id/product_name` of the board.
const DMI_PRODUCT: &str = "DGX H100";

/// Per GPU in address order: its PCI bus, NUMA node and `Device Minor`. The minors are
/// deliberately not in address order (as on real nodes): two pairs are swapped.
const GPUS: [(u8, u32, u32); 8] = [
    (0x18, 0, 2),
    (0x2a, 0, 1),
    (0x3a, 0, 0),
    (0x5d, 0, 3),
    (0x9a, 1, 4),
    (0xab, 1, 5),
    (0xba, 1, 7),
    (0xdb, 1, 6),
];

/// Root bus of the NVSwitches' PCIe switch (NUMA node 1).
const NVSWITCH_ROOT_BUS: u8 = 0xe0;
const NVSWITCHES: u8 = 4;

/// The kernel's `/proc/devices`: `%3d %s` per line, character then block devices.
/// Dynamic majors (the NVIDIA ones besides 195) are illustrative.
const PROC_DEVICES: &str = "Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  4 ttyS
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
  7 vcs
 10 misc
 13 input
 21 sg
 29 fb
128 ptm
136 pts
180 usb
189 usb_device
195 nvidia
202 cpu/msr
203 cpu/cpuid
226 drm
231 infiniband_mad
231 infiniband_verbs
234 nvidia-nvswitch
235 nvidia-nvlink
236 nvidia-caps
237 nvidia-uvm
238 nvme-generic
239 nvme
240 bsg
241 watchdog
242 ptp
243 pps
244 rtc
245 dma_heap
246 dax
247 dimmctl
248 ndctl
249 hidraw
250 tpm
251 aux
252 ipmidev
253 bsg
254 gpiochip

Block devices:
  7 loop
  8 sd
  9 md
 11 sr
 65 sd
 66 sd
 67 sd
 68 sd
 69 sd
 70 sd
 71 sd
128 sd
129 sd
130 sd
131 sd
132 sd
133 sd
134 sd
135 sd
253 device-mapper
254 mdp
259 blkext
";

impl SimNode {
    /// A DGX H100-like node: 8 H100 SXM5 80GB GPUs (bound to `nvidia`, minors not in
    /// address order), 8 ConnectX-7 InfiniBand NICs (`mlx5_core`, `mlx5_0..7`), 4
    /// NVSwitches, the NVIDIA procfs files, `/proc/devices` and all device nodes.
    pub fn dgx_h100(root: &Path) -> io::Result<SimNode> {
        let mut node = SimNode::empty(root)?;
        let mut groups = 0_u32..;
        let mut group = move || groups.next();
        node.tree.write("/proc/devices", PROC_DEVICES)?;
        node.add_dmi_ids()?;
        node.add_nvidia_driver_files()?;

        for (n, &(gpu_bus, numa, minor)) in (0_u32..).zip(GPUS.iter()) {
            let ports = node.add_switch(gpu_bus - 3, numa, 2, &mut group)?;
            let gpu = SimGpu {
                address: format!("0000:{gpu_bus:02x}:00.0"),
                uuid: uuid(u64::from(n)),
                minor,
                numa_node: numa,
                model: H100_MODEL.into(),
            };
            let f = PciFunction {
                subsystem_device: 0x16c1,
                revision: 0xa1,
                numa_node: Some(numa),
                driver: Some("nvidia".into()),
                iommu_group: group(),
                ..PciFunction::new(&gpu.address, 0x10de, 0x2330, 0x03_02_00)
            };
            node.gpus.push(gpu.clone());
            node.add_pci_function(&ports[0], &f)?;
            node.sync_gpu_proc(&gpu.address)?;
            node.add_dev_node(&gpu.dev_node())?;

            let nic_bus = gpu_bus + 1;
            let netdev = format!("ibp{nic_bus}s0");
            let nic = SimNic {
                address: format!("0000:{nic_bus:02x}:00.0"),
                ib_device: format!("mlx5_{n}"),
                char_index: n,
                netdev: netdev.clone(),
                numa_node: numa,
                node_guid: guid(0x946d_ae03_00f5_6e00 + u64::from(n) * 0x20),
                link_layer: "InfiniBand".into(),
                ports: vec![SimPort {
                    number: 1,
                    umad_index: n,
                    netdev,
                }],
                issm: true,
            };
            let f = PciFunction {
                subsystem_device: 0x0041,
                numa_node: Some(numa),
                driver: Some("mlx5_core".into()),
                iommu_group: group(),
                ..PciFunction::new(&nic.address, 0x15b3, 0x1021, 0x02_07_00)
            };
            let dir = node.add_pci_function(&ports[1], &f)?;
            node.add_ib_devices(&nic, &dir, 0x10 + n, &Model::connectx7(&nic.ib_device))?;
            node.add_ipoib_netdev(&dir, &nic.netdev, &nic.node_guid)?;
            node.nics.push(nic);
        }

        let ports = node.add_switch(NVSWITCH_ROOT_BUS, 1, NVSWITCHES, &mut group)?;
        for (k, port) in (0_u8..).zip(&ports) {
            let address = format!("0000:{:02x}:00.0", NVSWITCH_ROOT_BUS + 3 + k);
            let f = PciFunction {
                subsystem_device: 0x1796,
                revision: 0xa1,
                numa_node: Some(1),
                driver: Some("nvidia".into()),
                iommu_group: group(),
                ..PciFunction::new(&address, 0x10de, 0x22a3, 0x06_80_00)
            };
            node.add_pci_function(port, &f)?;
            node.add_dev_node(&format!("/dev/nvidia-nvswitch{k}"))?;
        }
        node.add_dev_node("/dev/nvidia-nvswitchctl")?;
        node.add_dev_node("/dev/infiniband/rdma_cm")?;
        // The kernel log, quiet: XIDs are appended by tests that want them.
        node.add_dev_node("/dev/kmsg")?;
        Ok(node)
    }

    /// The board's DMI identity, where the kernel puts it: `/sys/devices/virtual/dmi/id`
    /// with `/sys/class/dmi/id` linking to it.
    fn add_dmi_ids(&self) -> io::Result<()> {
        let dir = "/sys/devices/virtual/dmi/id";
        self.tree
            .write(&format!("{dir}/product_name"), &format!("{DMI_PRODUCT}\n"))?;
        self.tree.write(&format!("{dir}/sys_vendor"), "NVIDIA\n")?;
        self.tree.link("/sys/class/dmi/id", dir)
    }

    /// A root port on root bus `root_bus` with a PCIe switch below it; returns the
    /// canonical node paths of the switch's `downstream` ports (secondary buses
    /// `root_bus + 3 + k`).
    fn add_switch(
        &self,
        root_bus: u8,
        numa: u32,
        downstream: u8,
        group: &mut impl FnMut() -> Option<u32>,
    ) -> io::Result<Vec<String>> {
        // Intel Sapphire Rapids root port; Broadcom PEX89000 switch ports (revision b0).
        let bridge = |address: &str, vendor, device, revision, group| PciFunction {
            revision,
            numa_node: Some(numa),
            driver: Some("pcieport".into()),
            iommu_group: group,
            ..PciFunction::new(address, vendor, device, 0x06_04_00)
        };
        let root_port = format!("0000:{root_bus:02x}:01.0");
        let rp = bridge(&root_port, 0x8086, 0x352a, 0x04, group());
        let rp_dir = self.add_pci_function(&root_bus_dir(&root_port), &rp)?;
        let upstream = format!("0000:{:02x}:00.0", root_bus + 1);
        let up_dir =
            self.add_pci_function(&rp_dir, &bridge(&upstream, 0x1000, 0xc030, 0xb0, group()))?;
        (0..downstream)
            .map(|k| {
                let address = format!("0000:{:02x}:{k:02x}.0", root_bus + 2);
                self.add_pci_function(&up_dir, &bridge(&address, 0x1000, 0xc030, 0xb0, group()))
            })
            .collect()
    }
}
