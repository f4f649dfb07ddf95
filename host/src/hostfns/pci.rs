//! `pci` interface: the node's PCI functions, parsed from `/sys/bus/pci/devices`.
//!
//! Parsing lives on the host so that every guest sees the same, correct reading of the
//! kernel's formats (`0x%04x` IDs, `0x%06x` class, `-1` for no NUMA affinity, links for
//! driver, IOMMU group and SR-IOV parent) instead of each vendor re-implementing it.

use super::NodeAccess;
use super::sysfs::MAX_FILE_BYTES;
use crate::host_root::node_file::NodeFile;
use crate::wit::latest::pci::Host;
use crate::wit::latest::types::{Error as WitError, PciDevice};

const PCI_DEVICES: &str = "/sys/bus/pci/devices";

impl Host for NodeAccess {
    fn list_devices(&mut self) -> Result<Vec<PciDevice>, WitError> {
        let listing = self.resolver().open(PCI_DEVICES)?;
        let entries = listing
            .entries()
            .map_err(|e| WitError::Io(format!("cannot list {PCI_DEVICES}: {}", e.reason())))?;
        let mut addresses: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|name| name.into_string().ok())
            .collect();
        addresses.sort();
        let mut devices = Vec::with_capacity(addresses.len());
        for address in addresses {
            match self.read_pci_device(&address) {
                Ok(device) => devices.push(device),
                Err(e) => tracing::warn!(
                    guest = self.guest(),
                    address,
                    error = %e,
                    "skipping a PCI function whose sysfs attributes cannot be read"
                ),
            }
        }
        Ok(devices)
    }
}

impl NodeAccess {
    /// One function's attributes, each read relative to its directory as the resolver
    /// opened it: an attribute is a plain name there, never followed out of it.
    fn read_pci_device(&self, address: &str) -> Result<PciDevice, WitError> {
        let base = format!("{PCI_DEVICES}/{address}");
        let dir = self.resolver().open(&base)?;
        let attr = |name: &str| -> Result<String, WitError> {
            let bytes = dir
                .child(name)
                .and_then(|file| file.read(MAX_FILE_BYTES))
                .map_err(|e| WitError::Io(format!("{base}/{name}: {}", e.reason())))?;
            String::from_utf8(bytes)
                .map(|s| s.trim().to_owned())
                .map_err(|_| WitError::Io(format!("{base}/{name} is not UTF-8 text")))
        };
        let hex = |name: &str| -> Result<u32, WitError> {
            let text = attr(name)?;
            parse_hex(&text)
                .ok_or_else(|| WitError::Io(format!("{base}/{name}: {text:?} is not a hex number")))
        };
        let narrow = |name: &str| -> Result<u16, WitError> {
            u16::try_from(hex(name)?)
                .map_err(|_| WitError::Io(format!("{base}/{name} does not fit 16 bits")))
        };
        let numa_node = match attr("numa_node") {
            Ok(text) => text.parse::<i64>().ok().and_then(|n| u32::try_from(n).ok()),
            Err(_) => None,
        };
        Ok(PciDevice {
            address: address.to_owned(),
            vendor: narrow("vendor")?,
            device: narrow("device")?,
            class: hex("class")?,
            subsystem_vendor: narrow("subsystem_vendor").unwrap_or(0),
            subsystem_device: narrow("subsystem_device").unwrap_or(0),
            numa_node,
            driver: link_name(&dir, "driver"),
            iommu_group: link_name(&dir, "iommu_group").and_then(|g| g.parse().ok()),
            physfn: link_name(&dir, "physfn"),
            sysfs_path: dir.node().display().to_string(),
        })
    }
}

/// The last component of a link's target (`../../bus/pci/drivers/nvidia` → `nvidia`);
/// none when the link is absent, which sysfs uses to say "unbound" or "no IOMMU".
fn link_name(dir: &NodeFile, link: &str) -> Option<String> {
    let target = dir.child_link(link).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

fn parse_hex(text: &str) -> Option<u32> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))?;
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn parses_kernel_formats_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let dev = root.join("sys/devices/pci0000:15/0000:15:01.0/0000:18:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        for (name, value) in [
            ("vendor", "0x10de\n"),
            ("device", "0x2330\n"),
            ("class", "0x030200\n"),
            ("subsystem_vendor", "0x10de\n"),
            ("subsystem_device", "0x16c1\n"),
            ("numa_node", "1\n"),
        ] {
            std::fs::write(dev.join(name), value).unwrap();
        }
        std::fs::create_dir_all(root.join("sys/bus/pci/drivers/nvidia")).unwrap();
        symlink("../../../../bus/pci/drivers/nvidia", dev.join("driver")).unwrap();
        symlink("../../../../kernel/iommu_groups/7", dev.join("iommu_group")).unwrap();
        // A function whose attributes are garbage is skipped, not fatal.
        let bad = root.join("sys/devices/pci0000:15/0000:15:02.0");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("vendor"), "nonsense\n").unwrap();
        std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        symlink(
            "../../../devices/pci0000:15/0000:15:01.0/0000:18:00.0",
            root.join("sys/bus/pci/devices/0000:18:00.0"),
        )
        .unwrap();
        symlink(
            "../../../devices/pci0000:15/0000:15:02.0",
            root.join("sys/bus/pci/devices/0000:15:02.0"),
        )
        .unwrap();

        let mut access = crate::hostfns::testing::reader(root);
        let devices = access.list_devices().unwrap();
        assert_eq!(devices.len(), 1);
        let gpu = &devices[0];
        assert_eq!(gpu.address, "0000:18:00.0");
        assert_eq!(
            (gpu.vendor, gpu.device, gpu.class),
            (0x10de, 0x2330, 0x030200)
        );
        assert_eq!(
            (gpu.subsystem_vendor, gpu.subsystem_device),
            (0x10de, 0x16c1)
        );
        assert_eq!(gpu.numa_node, Some(1));
        assert_eq!(gpu.driver.as_deref(), Some("nvidia"));
        assert_eq!(gpu.iommu_group, Some(7));
        assert_eq!(gpu.physfn, None);
        assert_eq!(
            gpu.sysfs_path,
            "/sys/devices/pci0000:15/0000:15:01.0/0000:18:00.0"
        );
    }

    #[test]
    fn numa_minus_one_means_unknown() {
        assert_eq!(
            "-1".parse::<i64>().ok().and_then(|n| u32::try_from(n).ok()),
            None
        );
        assert_eq!(parse_hex("0x030200"), Some(0x030200));
        assert_eq!(parse_hex("030200"), None);
    }
}
