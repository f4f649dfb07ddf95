//! Choosing PCI functions from the host's parsed list (`host::pci::list_devices`), by
//! vendor, class, driver and SR-IOV role. Filters are `const`, so a guest names its
//! devices once:
//!
//! ```ignore
//! const GPUS: Filter = Filter::new().vendor(0x10de).classes(&[0x0300, 0x0302]).physical();
//! ```

use crate::error::context;
use crate::host::pci;
use crate::types::{Error, PciDevice};

/// Which PCI functions to keep; every condition set must hold.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    vendor: Option<u16>,
    classes: Option<&'a [u16]>,
    driver: Option<&'a str>,
    physfn: Option<bool>,
}

impl<'a> Filter<'a> {
    /// Keeps every function.
    pub const fn new() -> Self {
        Filter {
            vendor: None,
            classes: None,
            driver: None,
            physfn: None,
        }
    }

    /// Only functions of this vendor ID (e.g. `0x10de`).
    pub const fn vendor(mut self, vendor: u16) -> Self {
        self.vendor = Some(vendor);
        self
    }

    /// Only functions whose class and subclass (the class code without its programming
    /// interface byte, e.g. `0x0302` for a 3D controller) is one of these.
    pub const fn classes(mut self, classes: &'a [u16]) -> Self {
        self.classes = Some(classes);
        self
    }

    /// Only functions bound to this driver (e.g. `nvidia`; unbound ones never match).
    pub const fn driver(mut self, driver: &'a str) -> Self {
        self.driver = Some(driver);
        self
    }

    /// Only physical functions: SR-IOV virtual functions belong to whoever owns their
    /// physical function (a VM, vGPU).
    pub const fn physical(mut self) -> Self {
        self.physfn = Some(false);
        self
    }

    /// Only SR-IOV virtual functions.
    pub const fn virtual_functions(mut self) -> Self {
        self.physfn = Some(true);
        self
    }

    /// Whether `dev` passes every condition.
    pub fn matches(&self, dev: &PciDevice) -> bool {
        self.vendor.is_none_or(|v| dev.vendor == v)
            && self
                .classes
                .is_none_or(|classes| classes.contains(&class_subclass(dev)))
            && self.driver.is_none_or(|d| dev.driver.as_deref() == Some(d))
            && self.physfn.is_none_or(|vf| dev.physfn.is_some() == vf)
    }

    /// The node's functions that match, in address order.
    pub fn list(&self) -> Result<Vec<PciDevice>, Error> {
        let mut devices = list_all()?;
        devices.retain(|d| self.matches(d));
        Ok(devices)
    }
}

/// Every PCI function of the node, in address order; the error says what failed.
pub fn list_all() -> Result<Vec<PciDevice>, Error> {
    pci::list_devices().map_err(|e| context(e, "listing the node's PCI devices"))
}

/// The class and subclass of a function (`0x0302`), without the programming interface.
pub fn class_subclass(dev: &PciDevice) -> u16 {
    // The class code has 24 bits: the upper 16 always fit.
    u16::try_from(dev.class >> 8).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(vendor: u16, class: u32, driver: Option<&str>, physfn: Option<&str>) -> PciDevice {
        PciDevice {
            address: "0000:18:00.0".into(),
            vendor,
            device: 0x2330,
            class,
            subsystem_vendor: 0,
            subsystem_device: 0,
            numa_node: None,
            driver: driver.map(String::from),
            iommu_group: None,
            physfn: physfn.map(String::from),
            sysfs_path: String::new(),
        }
    }

    #[test]
    fn every_condition_must_hold() {
        const GPUS: Filter = Filter::new()
            .vendor(0x10de)
            .classes(&[0x0300, 0x0302])
            .physical();
        assert!(GPUS.matches(&dev(0x10de, 0x030200, Some("nvidia"), None)));
        assert!(GPUS.matches(&dev(0x10de, 0x030000, None, None)));
        assert!(!GPUS.matches(&dev(0x10de, 0x068000, Some("nvidia"), None)));
        assert!(!GPUS.matches(&dev(0x15b3, 0x030200, Some("nvidia"), None)));
        assert!(!GPUS.matches(&dev(0x10de, 0x030200, None, Some("0000:17:00.0"))));
        let bound = GPUS.driver("nvidia");
        assert!(bound.matches(&dev(0x10de, 0x030200, Some("nvidia"), None)));
        assert!(!bound.matches(&dev(0x10de, 0x030200, Some("vfio-pci"), None)));
        assert!(!bound.matches(&dev(0x10de, 0x030200, None, None)));
        let vfs = Filter::new().virtual_functions();
        assert!(vfs.matches(&dev(0x15b3, 0x020000, None, Some("0000:17:00.0"))));
        assert!(!vfs.matches(&dev(0x15b3, 0x020000, None, None)));
        assert!(Filter::new().matches(&dev(1, 2, None, None)));
    }
}
