//! Finding the node's GPUs: PCI functions filtered to NVIDIA display/3D controllers bound
//! to the `nvidia` driver, joined with NVML's record of the GPU when NVML answered, else
//! with what the driver reports in procfs.

use crate::config::DeviceIdStrategy;
use wdp_guest_sdk::attr::key_values;
use wdp_guest_sdk::error::message;
use wdp_guest_sdk::host::nvml::{self, MigMode, System};
use wdp_guest_sdk::host::sysfs;
use wdp_guest_sdk::pci::Filter;
use wdp_guest_sdk::types::{Error, PciDevice};

/// Full NVIDIA GPUs, whatever their driver: VGA-compatible and 3D controllers
/// (NVSwitches, `0x0680`, fall outside). Virtual functions belong to whoever owns the
/// physical function (vGPU/SR-IOV).
const GPUS: Filter = Filter::new()
    .vendor(0x10de)
    .classes(&[0x0300, 0x0302])
    .physical();

/// One GPU the node can offer.
#[derive(Clone, Debug, Default)]
pub struct Gpu {
    /// PCI address, `DDDD:BB:DD.F`.
    pub address: String,
    pub uuid: String,
    /// `Device Minor`: N in `/dev/nvidiaN` (not necessarily the CUDA/nvidia-smi index).
    pub minor: u32,
    pub model: String,
    pub numa_node: Option<u32>,
    /// Canonical sysfs directory; shared prefixes reveal a shared PCIe switch.
    pub sysfs_path: String,
    /// NVML's record (index, memory, compute capability, MIG mode and devices); none on
    /// the sysfs path.
    pub nvml: Option<nvml::Gpu>,
    /// NVLink peers: remote PCI address (lower case), whether it is a GPU (else an
    /// NVSwitch), and how many links lead there.
    pub links: Vec<(String, bool, u32)>,
}

impl Gpu {
    /// The device ID advertised to the kubelet (before any replica suffix).
    pub fn id(&self, strategy: DeviceIdStrategy) -> String {
        match strategy {
            DeviceIdStrategy::Uuid => self.uuid.clone(),
            DeviceIdStrategy::Index => self.minor.to_string(),
        }
    }

    /// Node path of the GPU's own device node.
    pub fn dev_path(&self) -> String {
        format!("/dev/nvidia{}", self.minor)
    }

    /// Whether NVML says the GPU is in MIG mode (only NVML can tell).
    pub fn mig_enabled(&self) -> bool {
        self.nvml
            .as_ref()
            .is_some_and(|n| matches!(n.mig_mode, MigMode::Enabled))
    }

    /// Whether a configuration selector (UUID, minor or PCI address) names this GPU.
    pub fn matches(&self, selector: &str) -> bool {
        selector.eq_ignore_ascii_case(&self.uuid)
            || selector.eq_ignore_ascii_case(&self.address)
            || selector.parse::<u32>().is_ok_and(|m| m == self.minor)
    }
}

/// The GPUs found on one look at the node.
#[derive(Debug, Default)]
pub struct Scan {
    /// Offerable GPUs, sorted by minor number for a stable order.
    pub gpus: Vec<Gpu>,
    /// NVIDIA GPU functions on the bus that are not offered on purpose, with the reason
    /// (another driver or none, excluded by the driver, partitioned into MIG instances).
    pub withheld: Vec<(String, String)>,
    /// Whether NVML's reading was used (its events are read then).
    pub nvml: bool,
    /// Why NVML's reading is an old one (every GPU is Unhealthy meanwhile).
    pub nvml_problem: Option<String>,
}

/// What the driver says about one GPU in `/proc/driver/nvidia/gpus/<address>/information`.
#[derive(Debug, PartialEq, Eq)]
pub struct Information {
    pub model: Option<String>,
    pub uuid: String,
    pub minor: u32,
    /// `GPU Excluded: Yes` (older drivers: `Blacklisted: Yes`): the operator took the
    /// GPU away from workloads through the driver's `NVreg_ExcludedGpus`.
    pub excluded: bool,
}

impl Information {
    /// Parses the file's `Key: <tabs/spaces> value` lines; the error says what is missing.
    pub fn parse(text: &str) -> Result<Information, String> {
        let (mut model, mut uuid, mut minor, mut excluded) = (None, None, None, false);
        for (key, value) in key_values(text) {
            match key {
                "Model" => model = Some(value.to_string()),
                "GPU UUID" => uuid = Some(value.to_string()),
                "Device Minor" => {
                    minor = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| format!("`Device Minor` is not a number: `{value}`"))?,
                    );
                }
                "GPU Excluded" | "Blacklisted" => excluded = value.eq_ignore_ascii_case("yes"),
                _ => {}
            }
        }
        let uuid = uuid.filter(|u| !u.is_empty()).ok_or("no `GPU UUID` line")?;
        let minor = minor.ok_or("no `Device Minor` line")?;
        Ok(Information {
            model,
            uuid,
            minor,
            excluded,
        })
    }
}

/// Looks at the node once. `system` is NVML's reading when there is one; `keep_mig` keeps
/// GPUs in MIG mode (whose MIG devices a strategy offers) instead of withholding them.
pub fn scan(system: Option<&System>, keep_mig: bool) -> Result<Scan, Error> {
    let mut scan = Scan::default();
    for dev in &GPUS.list()? {
        // Unbound or vfio-pci GPUs are meant for VMs, not for containers.
        if dev.driver.as_deref() != Some("nvidia") {
            let driver = dev.driver.as_deref().unwrap_or("no driver");
            scan.withheld.push((
                dev.address.clone(),
                format!("bound to {driver}, not nvidia"),
            ));
            continue;
        }
        // NVML lists no excluded GPU; one it does not list is read from procfs below.
        if let Some(g) = system.and_then(|s| {
            s.gpus
                .iter()
                .find(|g| g.pci_address.eq_ignore_ascii_case(&dev.address))
        }) {
            let gpu = from_nvml(dev, g, system.map_or(&[], |s| &s.gpus));
            if gpu.mig_enabled() && !keep_mig {
                scan.withheld.push((
                    dev.address.clone(),
                    "in MIG mode, which migStrategy \"none\" does not offer".into(),
                ));
            } else {
                scan.gpus.push(gpu);
            }
            continue;
        }
        let path = format!("/proc/driver/nvidia/gpus/{}/information", dev.address);
        let info = match sysfs::read_file(&path)
            .map_err(message)
            .and_then(|t| Information::parse(&t))
        {
            Ok(info) => info,
            // Not withheld: a GPU the driver no longer describes is a fault, reported by
            // the health monitor if it was offered before.
            Err(_) => continue,
        };
        if info.excluded {
            scan.withheld
                .push((dev.address.clone(), "excluded by the driver".into()));
            continue;
        }
        if mig_partitioned(info.minor) {
            scan.withheld.push((
                dev.address.clone(),
                "partitioned into MIG instances, which are offered only with NVML".into(),
            ));
            continue;
        }
        scan.gpus.push(Gpu {
            address: dev.address.clone(),
            uuid: info.uuid,
            minor: info.minor,
            model: info.model.unwrap_or_default(),
            numa_node: dev.numa_node,
            sysfs_path: dev.sysfs_path.clone(),
            ..Gpu::default()
        });
    }
    crate::order::sort_by_key(&mut scan.gpus, |g| g.minor);
    Ok(scan)
}

/// A GPU as NVML describes it, placed by its PCI function; `all` is every GPU NVML
/// lists, to tell NVLinks to GPUs from those to NVSwitches.
pub fn from_nvml(dev: &PciDevice, g: &nvml::Gpu, all: &[nvml::Gpu]) -> Gpu {
    let mut links: Vec<(String, bool, u32)> = Vec::new();
    for l in &g.nvlinks {
        let remote = l.remote_pci_address.to_ascii_lowercase();
        match links.iter_mut().find(|(r, ..)| *r == remote) {
            Some((.., n)) => *n += 1,
            None => {
                let to_gpu = all
                    .iter()
                    .any(|o| o.pci_address.eq_ignore_ascii_case(&remote));
                links.push((remote, to_gpu, 1));
            }
        }
    }
    Gpu {
        address: dev.address.clone(),
        uuid: g.uuid.clone(),
        minor: g.minor,
        model: g.name.clone(),
        numa_node: dev.numa_node,
        sysfs_path: dev.sysfs_path.clone(),
        nvml: Some(g.clone()),
        links,
    }
}

/// The driver lists a GPU's MIG GPU instances as `gi<N>` directories under
/// `/proc/driver/nvidia/capabilities/gpu<minor>/mig/`; a GPU with any cannot be used
/// whole. (MIG mode enabled with no instance yet is invisible without NVML.)
fn mig_partitioned(minor: u32) -> bool {
    sysfs::list_dir(&format!("/proc/driver/nvidia/capabilities/gpu{minor}/mig"))
        .is_ok_and(|entries| entries.iter().any(|e| e.starts_with("gi")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &str = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 185\n\
        GPU UUID: \t GPU-12345678-90ab-cdef-1234-567890abcdef\nVideo BIOS: \t 96.00.99.00.01\n\
        Bus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\n\
        Bus Location: \t 0000:1b:00.0\nDevice Minor: \t 3\nGPU Firmware: \t 550.54.15\n\
        GPU Excluded:\t No\n";

    #[test]
    fn parses_current_driver_format() {
        let info = Information::parse(H100).unwrap();
        assert_eq!(info.model.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(info.uuid, "GPU-12345678-90ab-cdef-1234-567890abcdef");
        assert_eq!(info.minor, 3);
        assert!(!info.excluded);
    }

    #[test]
    fn reads_excluded_and_older_blacklisted() {
        let text = H100.replace("GPU Excluded:\t No", "GPU Excluded:\t Yes");
        assert!(Information::parse(&text).unwrap().excluded);
        let text = H100.replace("GPU Excluded:\t No", "Blacklisted:\t Yes");
        assert!(Information::parse(&text).unwrap().excluded);
    }

    #[test]
    fn refuses_incomplete_files() {
        assert!(Information::parse("").is_err());
        assert!(
            Information::parse(&H100.replace("Device Minor: \t 3", "Device Minor: \t x")).is_err()
        );
        assert!(Information::parse(&H100.replace("GPU UUID", "UUID")).is_err());
    }

    #[test]
    fn selectors_name_a_gpu_by_uuid_minor_or_address() {
        let gpu = Gpu {
            address: "0000:1b:00.0".into(),
            uuid: "GPU-abc".into(),
            minor: 3,
            model: String::new(),
            ..Gpu::default()
        };
        for yes in ["GPU-abc", "gpu-ABC", "3", "0000:1B:00.0"] {
            assert!(gpu.matches(yes), "{yes}");
        }
        for no in ["GPU-ab", "4", "0000:1b:00.1", "03x"] {
            assert!(!gpu.matches(no), "{no}");
        }
    }
}
