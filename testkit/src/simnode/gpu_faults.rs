//! What goes wrong with GPUs, as sysfs and procfs show it: hot-unplug (the function
//! leaves the bus), a link trained below its width, fatal AER errors, a GPU that stops
//! answering (config space reads all ones), and MIG instances created on a GPU.

use std::io;

use super::SimNode;
use super::mixed::AER_FATAL_ZERO;
use super::pci::{BUS_DEVICES, PciFunction};

/// A GPU taken off the bus by [`SimNode::hot_unplug_gpu`]: what is needed to put it back
/// exactly as it was with [`SimNode::hot_plug_gpu`].
#[derive(Clone, Debug)]
pub struct UnpluggedGpu {
    /// Directory of the bridge the GPU hung off.
    parent: String,
    function: PciFunction,
    /// Attribute files beyond the standard ones (`reset`, `aer_dev_fatal`, …).
    extra: Vec<(String, String)>,
}

impl UnpluggedGpu {
    pub fn address(&self) -> &str {
        &self.function.address
    }
}

/// Files `add_pci_function` writes itself.
const STANDARD: [&str; 12] = [
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "class",
    "revision",
    "numa_node",
    "current_link_speed",
    "current_link_width",
    "max_link_speed",
    "max_link_width",
    "enable",
];

impl SimNode {
    /// Surprise removal of a GPU: its `/sys/bus/pci/devices` entry goes first (as the
    /// kernel removes it), then its driver binding and procfs directory, then its
    /// canonical directory. Its `/dev/nvidiaN` node stays, as static nodes do.
    pub fn hot_unplug_gpu(&self, address: &str) -> io::Result<UnpluggedGpu> {
        self.gpu(address)?;
        let dir = self.pci_dir(address)?;
        let unplugged = self.read_back(address, &dir)?;
        self.tree.remove_file(&format!("{BUS_DEVICES}/{address}"))?;
        self.unbind_pci_driver(address)?;
        if let Some(group) = unplugged.function.iommu_group {
            self.tree.remove_file(&format!(
                "/sys/kernel/iommu_groups/{group}/devices/{address}"
            ))?;
        }
        self.tree.remove_dir(&dir)?;
        self.functions_lock().remove(address);
        Ok(unplugged)
    }

    /// Puts an unplugged GPU back where it was, bound to its driver again.
    pub fn hot_plug_gpu(&self, gpu: &UnpluggedGpu) -> io::Result<()> {
        let dir = self.add_pci_function(&gpu.parent, &gpu.function)?;
        for (name, content) in &gpu.extra {
            self.tree.write(&format!("{dir}/{name}"), content)?;
        }
        self.sync_gpu_proc(&gpu.function.address)
    }

    /// Sets the width the link trained at (`current_link_width`); `max_link_width` stays.
    pub fn set_pci_link_width(&self, address: &str, width: u32) -> io::Result<()> {
        let dir = self.pci_dir(address)?;
        self.tree
            .write(&format!("{dir}/current_link_width"), &format!("{width}\n"))
    }

    /// Counts `n` more fatal uncorrectable errors (`DLP`) in `aer_dev_fatal`, creating the
    /// file (all zeros) first if the function has none.
    pub fn add_aer_fatal(&self, address: &str, n: u64) -> io::Result<()> {
        let dir = self.pci_dir(address)?;
        let path = format!("{dir}/aer_dev_fatal");
        let text = std::fs::read_to_string(self.tree.path(&path))
            .unwrap_or_else(|_| AER_FATAL_ZERO.to_string());
        let mut out = String::new();
        for line in text.lines() {
            let (name, count) = line.split_once(' ').unwrap_or((line, "0"));
            let count: u64 = count.trim().parse().unwrap_or(0);
            let count = if name == "DLP" || name == "TOTAL_ERR_FATAL" {
                count + n
            } else {
                count
            };
            out.push_str(&format!("{name} {count}\n"));
        }
        self.tree.write(&path, &out)
    }

    /// A GPU that stops answering: its config space reads all ones (`vendor` and
    /// `device` read `0xffff`), as after XID 79 "fallen off the bus". Only a reboot
    /// brings such a GPU back, so there is no way back here either.
    pub fn set_gpu_fallen_off_bus(&self, address: &str) -> io::Result<()> {
        self.gpu(address)?;
        let dir = self.pci_dir(address)?;
        self.tree.write(&format!("{dir}/vendor"), "0xffff\n")?;
        self.tree.write(&format!("{dir}/device"), "0xffff\n")
    }

    /// What a GPU's `reset` attribute was last written with (empty: never).
    pub fn gpu_reset_writes(&self, address: &str) -> io::Result<String> {
        let dir = self.pci_dir(address)?;
        std::fs::read_to_string(self.tree.path(&format!("{dir}/reset")))
    }

    /// Creates MIG GPU instance `gi` with compute instance `ci` on a GPU as the driver
    /// shows them: `access` files under `/proc/driver/nvidia/capabilities/gpu<minor>/mig/`
    /// naming the capability minors, their lines in `/proc/driver/nvidia-caps/mig-minors`,
    /// and the `/dev/nvidia-caps/nvidia-cap<N>` nodes. Minors follow the driver's table:
    /// 15 GPU instances of 1 + 8 minors per GPU after `config` 1 and `monitor` 2.
    pub fn add_mig_instance(&self, address: &str, gi: u32, ci: u32) -> io::Result<()> {
        let minor = self.gpu(address)?.minor;
        let gi_minor = 3 + minor * 135 + gi * 9;
        let ci_minor = gi_minor + 1 + ci;
        let base = format!("/proc/driver/nvidia/capabilities/gpu{minor}/mig/gi{gi}");
        let access =
            |m: u32| format!("DeviceFileMinor: {m}\nDeviceFileMode: 292\nDeviceFileModify: 1\n");
        self.tree
            .write(&format!("{base}/access"), &access(gi_minor))?;
        self.tree
            .write(&format!("{base}/ci{ci}/access"), &access(ci_minor))?;
        let table = "/proc/driver/nvidia-caps/mig-minors";
        let mut text = std::fs::read_to_string(self.tree.path(table))
            .unwrap_or_else(|_| "config 1\nmonitor 2\n".into());
        for line in [
            format!("gpu{minor}/gi{gi}/access {gi_minor}\n"),
            format!("gpu{minor}/gi{gi}/ci{ci}/access {ci_minor}\n"),
        ] {
            if !text.contains(&line) {
                text.push_str(&line);
            }
        }
        self.tree.write(table, &text)?;
        for m in [gi_minor, ci_minor] {
            self.add_dev_node(&format!("/dev/nvidia-caps/nvidia-cap{m}"))?;
        }
        Ok(())
    }

    /// Destroys every MIG instance of a GPU (its procfs capability directory goes).
    pub fn remove_mig_instances(&self, address: &str) -> io::Result<()> {
        let minor = self.gpu(address)?.minor;
        self.tree
            .remove_dir(&format!("/proc/driver/nvidia/capabilities/gpu{minor}/mig"))
    }

    /// Reads a function's attributes back, to re-create it after an unplug.
    fn read_back(&self, address: &str, dir: &str) -> io::Result<UnpluggedGpu> {
        let read = |name: &str| -> io::Result<String> {
            std::fs::read_to_string(self.tree.path(&format!("{dir}/{name}")))
                .map(|s| s.trim().to_string())
        };
        let hex = |name: &str| -> io::Result<u32> {
            let text = read(name)?;
            u32::from_str_radix(text.trim_start_matches("0x"), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}")))
        };
        let narrow = |name: &str| hex(name).map(|v| v as u16);
        let group = std::fs::read_link(self.tree.path(&format!("{dir}/iommu_group")))
            .ok()
            .and_then(|t| t.file_name()?.to_str()?.parse().ok());
        let function = PciFunction {
            address: address.to_string(),
            vendor: narrow("vendor")?,
            device: narrow("device")?,
            subsystem_vendor: narrow("subsystem_vendor")?,
            subsystem_device: narrow("subsystem_device")?,
            class: hex("class")?,
            revision: hex("revision")? as u8,
            numa_node: read("numa_node")?.parse().ok(),
            driver: self.pci_driver(address)?,
            iommu_group: group,
            link_speed: read("max_link_speed")?,
            link_width: read("max_link_width")?.parse().unwrap_or(16),
            physfn: None,
        };
        let mut extra = Vec::new();
        for entry in std::fs::read_dir(self.tree.path(dir))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && !STANDARD.contains(&name.as_str()) {
                extra.push((name, std::fs::read_to_string(entry.path())?));
            }
        }
        let parent = super::fsx::parent(dir).to_string();
        Ok(UnpluggedGpu {
            parent,
            function,
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn mixed() -> (tempfile::TempDir, SimNode) {
        let dir = tempfile::tempdir().unwrap();
        let node = SimNode::mixed_l40s_a100(dir.path()).unwrap();
        (dir, node)
    }

    #[test]
    fn unplug_and_plug_back() {
        let (_dir, node) = mixed();
        let a = "0000:88:00.0";
        let canonical = node.pci_dir(a).unwrap();
        node.add_aer_fatal(a, 1).unwrap();
        let unplugged = node.hot_unplug_gpu(a).unwrap();
        assert_eq!(unplugged.address(), a);
        for gone in [
            format!("/sys/bus/pci/devices/{a}"),
            canonical.clone(),
            format!("/sys/bus/pci/drivers/nvidia/{a}"),
            format!("/proc/driver/nvidia/gpus/{a}"),
        ] {
            assert!(fs::symlink_metadata(node.path(&gone)).is_err(), "{gone}");
        }
        assert!(node.path("/dev/nvidia2").is_file(), "static node stays");
        node.hot_plug_gpu(&unplugged).unwrap();
        assert_eq!(node.pci_dir(a).unwrap(), canonical);
        assert_eq!(node.pci_driver(a).unwrap().as_deref(), Some("nvidia"));
        let dev = format!("/sys/bus/pci/devices/{a}");
        assert_eq!(
            fs::read_to_string(node.path(&format!("{dev}/device"))).unwrap(),
            "0x20b5\n"
        );
        assert!(
            fs::read_to_string(node.path(&format!("{dev}/aer_dev_fatal")))
                .unwrap()
                .ends_with("TOTAL_ERR_FATAL 1\n")
        );
        assert!(
            node.path(&format!("/proc/driver/nvidia/gpus/{a}/information"))
                .is_file()
        );
        assert_eq!(fs::read_dir(node.path("/.staging")).unwrap().count(), 0);
    }

    #[test]
    fn link_aer_fall_off_and_mig() {
        let (_dir, node) = mixed();
        let a = "0000:1a:00.0";
        let dev = format!("/sys/bus/pci/devices/{a}");
        let read = |name: &str| fs::read_to_string(node.path(&format!("{dev}/{name}"))).unwrap();
        node.set_pci_link_width(a, 8).unwrap();
        assert_eq!(
            (read("current_link_width"), read("max_link_width")),
            ("8\n".into(), "16\n".into())
        );
        node.add_aer_fatal(a, 2).unwrap();
        node.add_aer_fatal(a, 1).unwrap();
        let aer = read("aer_dev_fatal");
        assert!(
            aer.contains("\nDLP 3\n") && aer.ends_with("TOTAL_ERR_FATAL 3\n"),
            "{aer}"
        );
        assert_eq!(aer.lines().count(), 19);
        node.set_gpu_fallen_off_bus(a).unwrap();
        assert_eq!(
            (read("vendor"), read("device")),
            ("0xffff\n".into(), "0xffff\n".into())
        );
        assert_eq!(node.gpu_reset_writes(a).unwrap(), "");

        let d = "0000:88:00.0"; // minor 2
        node.add_mig_instance(d, 1, 0).unwrap();
        let proc = |p: &str| fs::read_to_string(node.path(p)).unwrap();
        assert_eq!(
            proc("/proc/driver/nvidia/capabilities/gpu2/mig/gi1/access"),
            "DeviceFileMinor: 282\nDeviceFileMode: 292\nDeviceFileModify: 1\n"
        );
        assert!(
            proc("/proc/driver/nvidia/capabilities/gpu2/mig/gi1/ci0/access")
                .starts_with("DeviceFileMinor: 283\n")
        );
        assert_eq!(
            proc("/proc/driver/nvidia-caps/mig-minors"),
            "config 1\nmonitor 2\ngpu2/gi1/access 282\ngpu2/gi1/ci0/access 283\n"
        );
        assert!(node.path("/dev/nvidia-caps/nvidia-cap283").is_file());
        node.remove_mig_instances(d).unwrap();
        assert!(
            !node
                .path("/proc/driver/nvidia/capabilities/gpu2/mig")
                .exists()
        );
    }
}
