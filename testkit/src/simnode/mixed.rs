//! A mixed PCIe GPU server: L40S and A100 PCIe cards on two NUMA nodes, some behind PCIe
//! switches and some on their own root ports, one GPU excluded by the driver and one
//! SR-IOV virtual function. Device IDs and formats from the hardware facts (C.1, C.2).
//!
//! | GPU | address | model | NUMA | minor | attached |
//! |---|---|---|---|---|---|
//! | 0 | `0000:1a:00.0` | L40S | 0 | 1 | switch on root bus `17` |
//! | 1 | `0000:1b:00.0` | L40S | 0 | 0 | same switch |
//! | 2 | `0000:3b:00.0` | A100 80GB PCIe | 0 | 3 | own root port (bus `3a`), has VF `0000:3b:00.4` |
//! | 3 | `0000:88:00.0` | A100 80GB PCIe | 1 | 2 | switch on root bus `85` |
//! | 4 | `0000:89:00.0` | A100 80GB PCIe | 1 | 4 | same switch |
//! | 5 | `0000:b0:00.0` | L40S | 1 | 5 | own root port (bus `af`); **excluded** |
//!
//! Every GPU also has a `reset` attribute and an all-zero `aer_dev_fatal`; the node has
//! an empty-ish `/dev/kmsg` and `/dev/null`.

use std::io;
use std::path::Path;

use super::SimNode;
use super::nvidia::{SimGpu, uuid};
use super::pci::{PciFunction, root_bus_dir};

pub(crate) const L40S_MODEL: &str = "NVIDIA L40S";
pub(crate) const A100_MODEL: &str = "NVIDIA A100 80GB PCIe";
/// PCIe Gen4, what both cards train at.
const GEN4: &str = "16.0 GT/s PCIe";

/// `(address, L40S?, NUMA node, minor)`, in address order.
const GPUS: [(&str, bool, u32, u32); 6] = [
    ("0000:1a:00.0", true, 0, 1),
    ("0000:1b:00.0", true, 0, 0),
    ("0000:3b:00.0", false, 0, 3),
    ("0000:88:00.0", false, 1, 2),
    ("0000:89:00.0", false, 1, 4),
    ("0000:b0:00.0", true, 1, 5),
];
/// The GPU the driver excludes (`NVreg_ExcludedGpus`).
pub(crate) const EXCLUDED: &str = "0000:b0:00.0";

/// The kernel's `aer_dev_fatal` with every counter at zero.
pub(crate) const AER_FATAL_ZERO: &str = "Undefined 0\nDLP 0\nSDES 0\nTLP 0\nFCP 0\n\
CmpltTO 0\nCmpltAbrt 0\nUnxCmplt 0\nRxOF 0\nMalfTLP 0\nECRC 0\nUnsupReq 0\nACSViol 0\n\
UncorrIntErr 0\nBlockedTLP 0\nAtomicOpBlocked 0\nTLPBlockedErr 0\nPoisonTLPBlocked 0\n\
TOTAL_ERR_FATAL 0\n";

impl SimNode {
    /// The mixed L40S + A100 PCIe node described in this module's table: 6 GPUs, of
    /// which 5 are offerable (one is excluded), plus one A100 virtual function.
    pub fn mixed_l40s_a100(root: &Path) -> io::Result<SimNode> {
        let mut node = SimNode::empty(root)?;
        let mut groups = 0_u32..;
        let mut group = move || groups.next();
        node.add_nvidia_driver_files()?;
        node.add_dev_node("/dev/null")?;
        node.tree
            .write("/dev/kmsg", "6,0,0,-;Linux version 6.8.0-45-generic\n")?;
        node.excluded_lock().insert(EXCLUDED.to_string());

        // Parents: a two-port switch per NUMA node, and two lone root ports.
        let switch0 = node.add_mixed_switch(0x17, 0, &mut group)?;
        let switch1 = node.add_mixed_switch(0x85, 1, &mut group)?;
        let lone0 = node.add_root_port(0x3a, 0, &mut group)?;
        let lone1 = node.add_root_port(0xaf, 1, &mut group)?;
        let parents = [
            switch0[0].clone(),
            switch0[1].clone(),
            lone0,
            switch1[0].clone(),
            switch1[1].clone(),
            lone1,
        ];

        for (n, (&(address, l40s, numa, minor), parent)) in GPUS.iter().zip(&parents).enumerate() {
            let gpu = SimGpu {
                address: address.into(),
                uuid: uuid(100 + n as u64),
                minor,
                numa_node: numa,
                model: if l40s { L40S_MODEL } else { A100_MODEL }.into(),
            };
            let (device, subsystem) = if l40s {
                (0x26b9, 0x1851)
            } else {
                (0x20b5, 0x1533)
            };
            let f = PciFunction {
                subsystem_device: subsystem,
                revision: 0xa1,
                numa_node: Some(numa),
                driver: Some("nvidia".into()),
                iommu_group: group(),
                link_speed: GEN4.into(),
                ..PciFunction::new(address, 0x10de, device, 0x03_02_00)
            };
            node.gpus.push(gpu.clone());
            let dir = node.add_pci_function(parent, &f)?;
            node.tree.write(&format!("{dir}/reset"), "")?;
            node.tree
                .write(&format!("{dir}/aer_dev_fatal"), AER_FATAL_ZERO)?;
            node.sync_gpu_proc(address)?;
            node.add_dev_node(&gpu.dev_node())?;
        }

        // An SR-IOV virtual function of the lone A100 (vGPU host): never offered.
        let vf = PciFunction {
            subsystem_device: 0x1533,
            numa_node: Some(0),
            driver: Some("nvidia".into()),
            iommu_group: group(),
            link_speed: GEN4.into(),
            physfn: Some("0000:3b:00.0".into()),
            ..PciFunction::new("0000:3b:00.4", 0x10de, 0x20b5, 0x03_02_00)
        };
        node.add_pci_function(&parents[2], &vf)?;
        Ok(node)
    }

    /// Root port `R:01.0` and a switch below it (upstream `R+1:00.0`, downstream ports
    /// `R+2:00.0` and `R+2:01.0`); returns the downstream ports' directories.
    fn add_mixed_switch(
        &self,
        root_bus: u8,
        numa: u32,
        group: &mut impl FnMut() -> Option<u32>,
    ) -> io::Result<[String; 2]> {
        let root_port = self.add_root_port(root_bus, numa, group)?;
        let upstream = format!("0000:{:02x}:00.0", root_bus + 1);
        let up = self.add_pci_function(&root_port, &bridge(&upstream, 0x1000, numa, group()))?;
        let port = |k: u8, group: Option<u32>| {
            let address = format!("0000:{:02x}:{k:02x}.0", root_bus + 2);
            self.add_pci_function(&up, &bridge(&address, 0x1000, numa, group))
        };
        Ok([port(0, group())?, port(1, group())?])
    }

    /// A root port `R:01.0` on root bus `R`; returns its directory.
    fn add_root_port(
        &self,
        root_bus: u8,
        numa: u32,
        group: &mut impl FnMut() -> Option<u32>,
    ) -> io::Result<String> {
        let address = format!("0000:{root_bus:02x}:01.0");
        self.add_pci_function(
            &root_bus_dir(&address),
            &bridge(&address, 0x8086, numa, group()),
        )
    }
}

/// A PCIe bridge: an Intel root port (`vendor` 0x8086) or a Broadcom switch port.
fn bridge(address: &str, vendor: u16, numa: u32, group: Option<u32>) -> PciFunction {
    let device = if vendor == 0x8086 { 0x352a } else { 0xc030 };
    PciFunction {
        numa_node: Some(numa),
        driver: Some("pcieport".into()),
        iommu_group: group,
        link_speed: GEN4.into(),
        ..PciFunction::new(address, vendor, device, 0x06_04_00)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn read(node: &SimNode, path: &str) -> String {
        fs::read_to_string(node.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn mixed_node_has_the_table_s_gpus() {
        let dir = tempfile::tempdir().unwrap();
        let node = SimNode::mixed_l40s_a100(dir.path()).unwrap();
        let gpus = node.gpus();
        assert_eq!(gpus.len(), 6);
        for (gpu, &(address, l40s, numa, minor)) in gpus.iter().zip(&GPUS) {
            assert_eq!(
                (gpu.address.as_str(), gpu.numa_node, gpu.minor),
                (address, numa, minor)
            );
            let dev = format!("/sys/bus/pci/devices/{address}");
            let device = if l40s { "0x26b9\n" } else { "0x20b5\n" };
            assert_eq!(read(&node, &format!("{dev}/device")), device);
            assert_eq!(read(&node, &format!("{dev}/class")), "0x030200\n");
            assert_eq!(
                read(&node, &format!("{dev}/current_link_speed")),
                "16.0 GT/s PCIe\n"
            );
            assert_eq!(read(&node, &format!("{dev}/reset")), "");
            assert!(read(&node, &format!("{dev}/aer_dev_fatal")).ends_with("TOTAL_ERR_FATAL 0\n"));
            let info = read(
                &node,
                &format!("/proc/driver/nvidia/gpus/{address}/information"),
            );
            let excluded = if address == EXCLUDED { "Yes" } else { "No" };
            assert!(
                info.ends_with(&format!("GPU Excluded:\t {excluded}\n")),
                "{info}"
            );
            assert!(info.starts_with(&format!("Model: \t\t {}\n", gpu.model)));
            assert!(node.path(&gpu.dev_node()).is_file());
        }
        let vf = "/sys/bus/pci/devices/0000:3b:00.4";
        assert_eq!(
            fs::read_link(node.path(&format!("{vf}/physfn")))
                .unwrap()
                .to_string_lossy(),
            "../0000:3b:00.0"
        );
        assert!(!node.path("/proc/driver/nvidia/gpus/0000:3b:00.4").exists());
        // The two L40S share the switch's upstream port; the lone A100 does not.
        let a = node.pci_dir("0000:1a:00.0").unwrap();
        let b = node.pci_dir("0000:1b:00.0").unwrap();
        assert_eq!(
            a,
            "/sys/devices/pci0000:17/0000:17:01.0/0000:18:00.0/0000:19:00.0/0000:1a:00.0"
        );
        assert_eq!(
            b,
            "/sys/devices/pci0000:17/0000:17:01.0/0000:18:00.0/0000:19:01.0/0000:1b:00.0"
        );
        assert_eq!(
            node.pci_dir("0000:3b:00.0").unwrap(),
            "/sys/devices/pci0000:3a/0000:3a:01.0/0000:3b:00.0"
        );
        assert!(node.path("/dev/null").is_file() && node.path("/dev/kmsg").is_file());
    }
}
