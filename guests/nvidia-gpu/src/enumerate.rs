//! Finding the node's GPUs: PCI functions filtered to NVIDIA display/3D controllers bound
//! to the `nvidia` driver, joined with what the driver reports in procfs.

use crate::config::DeviceIdStrategy;
use crate::errors::{context, message};
use crate::wdp::device_plugin::types::{Error, Health, LogLevel, PciDevice};
use crate::wdp::device_plugin::{devfs, log, pci, sysfs};

const NVIDIA_VENDOR: u16 = 0x10de;
/// PCI class/subclass (class code without the programming interface byte) of a
/// VGA-compatible controller and of a 3D controller. NVSwitches (`0x0680`) fall outside.
const CLASS_VGA: u32 = 0x0300;
const CLASS_3D: u32 = 0x0302;

/// One GPU the node can offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// PCI address, `DDDD:BB:DD.F`.
    pub address: String,
    pub uuid: String,
    /// `Device Minor`: N in `/dev/nvidiaN` (not necessarily the CUDA/nvidia-smi index).
    pub minor: u32,
    pub numa_node: Option<u32>,
    pub health: Health,
}

impl Gpu {
    /// The device ID advertised to the kubelet.
    pub fn id(&self, strategy: DeviceIdStrategy) -> String {
        match strategy {
            DeviceIdStrategy::Uuid => self.uuid.clone(),
            DeviceIdStrategy::Index => self.minor.to_string(),
        }
    }

    /// Node path of the GPU's own device node.
    pub fn dev_path(&self) -> String {
        dev_path(self.minor)
    }
}

fn dev_path(minor: u32) -> String {
    format!("/dev/nvidia{minor}")
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
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim_matches(|c| c == ' ' || c == '\t');
            match key.trim() {
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

/// Whether a PCI function is a full NVIDIA GPU this guest may offer.
fn is_offerable_gpu(dev: &PciDevice) -> bool {
    let class = dev.class >> 8;
    dev.vendor == NVIDIA_VENDOR
        && (class == CLASS_VGA || class == CLASS_3D)
        // Virtual functions belong to whoever owns the physical function (vGPU/SR-IOV).
        && dev.physfn.is_none()
        // Unbound or vfio-pci GPUs are meant for VMs, not for containers.
        && dev.driver.as_deref() == Some("nvidia")
}

/// The node's offerable GPUs, sorted by minor number for a stable order.
pub fn gpus() -> Result<Vec<Gpu>, Error> {
    let devices = pci::list_devices().map_err(|e| context(e, "listing the node's PCI devices"))?;
    let mut gpus = Vec::new();
    for dev in devices.iter().filter(|d| is_offerable_gpu(d)) {
        let path = format!("/proc/driver/nvidia/gpus/{}/information", dev.address);
        let info = match sysfs::read_file(&path)
            .map_err(message)
            .and_then(|t| Information::parse(&t))
        {
            Ok(info) => info,
            Err(why) => {
                log::log(
                    LogLevel::Warn,
                    &format!("skipping GPU {}: cannot use {path}: {why}", dev.address),
                );
                continue;
            }
        };
        if info.excluded {
            log::log(
                LogLevel::Debug,
                &format!(
                    "skipping GPU {} ({}): the driver marks it excluded",
                    dev.address,
                    info.model.as_deref().unwrap_or("unknown model")
                ),
            );
            continue;
        }
        gpus.push(Gpu {
            address: dev.address.clone(),
            health: node_health(&dev_path(info.minor)),
            uuid: info.uuid,
            minor: info.minor,
            numa_node: dev.numa_node,
        });
    }
    gpus.sort_by_key(|g| g.minor);
    Ok(gpus)
}

/// A GPU is healthy while its device node exists; a lookup failure counts as unhealthy.
fn node_health(path: &str) -> Health {
    match devfs::lookup(path) {
        Ok(Some(_)) => Health::Healthy,
        Ok(None) => Health::Unhealthy,
        Err(e) => {
            log::log(
                LogLevel::Warn,
                &format!("cannot look up {path}: {}", message(e)),
            );
            Health::Unhealthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Information;

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
}
