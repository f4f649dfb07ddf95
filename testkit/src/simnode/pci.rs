//! PCI functions in sysfs: the canonical directory under `/sys/devices/pci<DDDD:BB>/…`,
//! its attributes in the kernel's formats, and the links that tie it to the bus, its
//! driver, its IOMMU group and (for a virtual function) its physical function.

use std::io;

use super::SimNode;

/// `/sys/bus/pci/devices`, where every function appears as a link to its canonical dir.
pub(crate) const BUS_DEVICES: &str = "/sys/bus/pci/devices";
pub(crate) const BUS_DRIVERS: &str = "/sys/bus/pci/drivers";

/// One PCI function to place in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// `DDDD:BB:DD.F`, lower-case hex.
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// 24-bit class code, e.g. `0x030200`.
    pub class: u32,
    pub revision: u8,
    /// `None` is written as `-1` (no affinity).
    pub numa_node: Option<u32>,
    /// Bound driver name; `None` leaves the function unbound.
    pub driver: Option<String>,
    /// `None`: no `iommu_group` link (no IOMMU).
    pub iommu_group: Option<u32>,
    /// e.g. `32.0 GT/s PCIe`.
    pub link_speed: String,
    pub link_width: u32,
    /// Address of the physical function when this is an SR-IOV virtual function.
    pub physfn: Option<String>,
}

impl PciFunction {
    /// A function with the given identity; subsystem = vendor:device, revision 0, no
    /// NUMA node, no driver, no IOMMU group, Gen5 x16. Adjust the public fields as needed.
    pub fn new(address: &str, vendor: u16, device: u16, class: u32) -> PciFunction {
        PciFunction {
            address: address.to_string(),
            vendor,
            device,
            subsystem_vendor: vendor,
            subsystem_device: device,
            class,
            revision: 0,
            numa_node: None,
            driver: None,
            iommu_group: None,
            link_speed: "32.0 GT/s PCIe".into(),
            link_width: 16,
            physfn: None,
        }
    }
}

impl SimNode {
    /// Adds a PCI function below `parent`, the canonical node path of a root bus
    /// (`/sys/devices/pci0000:15`) or of a bridge's directory, and returns the new
    /// function's canonical node path. The `/sys/bus/pci/devices` link comes last, so a
    /// concurrent reader never finds a half-written function.
    pub fn add_pci_function(&self, parent_dir: &str, f: &PciFunction) -> io::Result<String> {
        let dir = format!("{parent_dir}/{}", f.address);
        let numa = f
            .numa_node
            .map_or_else(|| "-1".to_string(), |n| n.to_string());
        let attributes = [
            ("vendor", format!("0x{:04x}\n", f.vendor)),
            ("device", format!("0x{:04x}\n", f.device)),
            (
                "subsystem_vendor",
                format!("0x{:04x}\n", f.subsystem_vendor),
            ),
            (
                "subsystem_device",
                format!("0x{:04x}\n", f.subsystem_device),
            ),
            ("class", format!("0x{:06x}\n", f.class)),
            ("revision", format!("0x{:02x}\n", f.revision)),
            ("numa_node", format!("{numa}\n")),
            ("current_link_speed", format!("{}\n", f.link_speed)),
            ("current_link_width", format!("{}\n", f.link_width)),
            ("max_link_speed", format!("{}\n", f.link_speed)),
            ("max_link_width", format!("{}\n", f.link_width)),
            ("enable", "1\n".to_string()),
        ];
        for (name, value) in attributes {
            self.tree.write(&format!("{dir}/{name}"), &value)?;
        }
        self.tree
            .link(&format!("{dir}/subsystem"), "/sys/bus/pci")?;
        if let Some(group) = f.iommu_group {
            let group_dir = format!("/sys/kernel/iommu_groups/{group}");
            self.tree.link(&format!("{dir}/iommu_group"), &group_dir)?;
            self.tree
                .link(&format!("{group_dir}/devices/{}", f.address), &dir)?;
        }
        if let Some(pf) = &f.physfn {
            let pf_dir = self.pci_dir(pf)?;
            self.tree.link(&format!("{dir}/physfn"), &pf_dir)?;
            let n = self.vf_count(&pf_dir)?;
            self.tree.link(&format!("{pf_dir}/virtfn{n}"), &dir)?;
        }
        self.functions_lock().insert(f.address.clone(), dir.clone());
        if let Some(driver) = &f.driver {
            self.bind(&f.address, &dir, driver)?;
        }
        self.tree
            .link(&format!("{BUS_DEVICES}/{}", f.address), &dir)?;
        Ok(dir)
    }

    /// Binds a function to `driver` (e.g. `vfio-pci`), replacing any current binding.
    pub fn bind_pci_driver(&self, address: &str, driver: &str) -> io::Result<()> {
        let dir = self.pci_dir(address)?;
        self.unbind(address, &dir)?;
        self.bind(address, &dir, driver)?;
        self.sync_gpu_proc(address)
    }

    /// Leaves a function without a driver (its `driver` link disappears).
    /// For a GPU, binding and unbinding also add or remove its procfs directory.
    pub fn unbind_pci_driver(&self, address: &str) -> io::Result<()> {
        let dir = self.pci_dir(address)?;
        self.unbind(address, &dir)?;
        self.sync_gpu_proc(address)
    }

    /// Canonical node path of a function added to this tree.
    pub fn pci_dir(&self, address: &str) -> io::Result<String> {
        self.functions_lock().get(address).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no PCI function {address} in the simulated node"),
            )
        })
    }

    /// The driver name a function is bound to, read back from its `driver` link.
    pub fn pci_driver(&self, address: &str) -> io::Result<Option<String>> {
        let dir = self.pci_dir(address)?;
        match std::fs::read_link(self.tree.path(&format!("{dir}/driver"))) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn bind(&self, address: &str, dir: &str, driver: &str) -> io::Result<()> {
        let driver_dir = format!("{BUS_DRIVERS}/{driver}");
        self.tree.mkdir(&driver_dir)?;
        self.tree.link(&format!("{driver_dir}/{address}"), dir)?;
        self.tree.link(&format!("{dir}/driver"), &driver_dir)
    }

    fn unbind(&self, address: &str, dir: &str) -> io::Result<()> {
        if let Some(driver) = self.pci_driver(address)? {
            self.tree.remove_file(&format!("{dir}/driver"))?;
            self.tree
                .remove_file(&format!("{BUS_DRIVERS}/{driver}/{address}"))?;
        }
        Ok(())
    }

    /// How many `virtfn<N>` links a physical function has.
    fn vf_count(&self, pf_dir: &str) -> io::Result<usize> {
        let entries = std::fs::read_dir(self.tree.path(pf_dir))?;
        let mut n = 0;
        for entry in entries {
            if entry?.file_name().to_string_lossy().starts_with("virtfn") {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The root-bus directory of an address: `0000:15:01.0` → `/sys/devices/pci0000:15`.
pub(crate) fn root_bus_dir(address: &str) -> String {
    let bus = address.rsplit_once(':').map_or(address, |(bus, _)| bus);
    format!("/sys/devices/pci{bus}")
}
