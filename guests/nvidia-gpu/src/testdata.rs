//! NVML fixtures for the unit tests: a DGX H100 (8 GPUs, each with 18 NVLinks spread
//! over 4 NVSwitches), optionally with MIG on the first two GPUs, as the host's NVML
//! test double describes it.

use crate::enumerate::{Gpu, from_nvml};
use wdp_guest_sdk::host::nvml::{self, MigDevice, MigMode, Nvlink};
use wdp_guest_sdk::types::PciDevice;

pub const H100: &str = "NVIDIA H100 80GB HBM3";
const BUSES: [u8; 8] = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];
pub const SWITCHES: [&str; 4] = [
    "0000:05:00.0",
    "0000:06:00.0",
    "0000:07:00.0",
    "0000:08:00.0",
];

pub fn address(index: u32) -> String {
    format!("0000:{:02x}:00.0", BUSES[index as usize])
}

pub fn mig(gpu: u32, gi: u32, profile: &str, slices: u32, memory_mib: u64) -> MigDevice {
    MigDevice {
        uuid: format!("MIG-{gpu}-{gi}"),
        profile: profile.into(),
        gpu_instance_id: gi,
        compute_instance_id: 0,
        gpu_slices: slices,
        compute_slices: slices,
        memory_mib,
        multiprocessors: 16 * slices,
    }
}

pub fn nvml_gpu(index: u32, migs: Vec<MigDevice>, links: Vec<String>) -> nvml::Gpu {
    nvml::Gpu {
        index,
        uuid: format!("GPU-{index}"),
        minor: index,
        pci_address: address(index),
        name: H100.into(),
        memory_mib: 81559,
        compute_capability: (9, 0),
        mig_mode: if migs.is_empty() {
            MigMode::Disabled
        } else {
            MigMode::Enabled
        },
        mig_devices: migs,
        nvlinks: links
            .into_iter()
            .enumerate()
            .map(|(link, remote_pci_address)| Nvlink {
                link: link as u32,
                remote_pci_address,
            })
            .collect(),
    }
}

/// 18 links per GPU: 5, 4, 4, 5 to the four switches.
pub fn switch_links() -> Vec<String> {
    [5, 4, 4, 5]
        .iter()
        .zip(SWITCHES)
        .flat_map(|(n, s)| std::iter::repeat_n(s.to_string(), *n))
        .collect()
}

/// The PCI function of an NVML GPU: NUMA 0 for the first four, 1 for the rest.
pub fn pci(g: &nvml::Gpu) -> PciDevice {
    PciDevice {
        address: g.pci_address.clone(),
        vendor: 0x10de,
        device: 0x2330,
        class: 0x030200,
        subsystem_vendor: 0x10de,
        subsystem_device: 0x16c1,
        numa_node: Some(g.index / 4),
        driver: Some("nvidia".into()),
        iommu_group: None,
        physfn: None,
        sysfs_path: format!("/sys/devices/pci0000:00/{}", g.pci_address),
    }
}

/// The DGX's NVML records; with `mig`, GPU 0 has 7× 1g.10gb and GPU 1 2× 3g.40gb.
pub fn dgx_nvml(mig_layout: bool) -> Vec<nvml::Gpu> {
    (0..8)
        .map(|i| {
            let migs = match (mig_layout, i) {
                (true, 0) => (0..7).map(|k| mig(0, 7 + k, "1g.10gb", 1, 9856)).collect(),
                (true, 1) => vec![
                    mig(1, 1, "3g.40gb", 3, 40192),
                    mig(1, 2, "3g.40gb", 3, 40192),
                ],
                _ => Vec::new(),
            };
            nvml_gpu(i, migs, switch_links())
        })
        .collect()
}

/// The DGX's GPUs as the scan joins them.
pub fn dgx(mig_layout: bool) -> Vec<Gpu> {
    let all = dgx_nvml(mig_layout);
    all.iter().map(|g| from_nvml(&pci(g), g, &all)).collect()
}
