//! One reading of the node's GPUs through NVML: what guests get from `nvml.devices`.
//!
//! Plain data, independent of the library, so the WIT conversion and the MIG profile
//! names are testable without one.

use super::library::{
    ERROR_INVALID_ARGUMENT, ERROR_NOT_SUPPORTED, Library, MAX_NVLINKS, NvmlError,
};

/// Longest text kept from NVML (names, versions): the library is the node's, but its
/// strings still reach guests and logs.
const MAX_TEXT: usize = 128;

/// The node's GPUs and driver, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub driver_version: String,
    /// Major and minor.
    pub cuda_version: (u32, u32),
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigMode {
    Unsupported,
    Disabled,
    Enabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub minor: u32,
    /// Sysfs form, lower case: `0000:18:00.0`.
    pub pci_address: String,
    pub name: String,
    pub memory_mib: u64,
    pub compute_capability: (u32, u32),
    pub mig_mode: MigMode,
    pub mig_devices: Vec<MigDevice>,
    pub nvlinks: Vec<NvLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigDevice {
    pub uuid: String,
    pub profile: String,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
    pub gpu_slices: u32,
    pub compute_slices: u32,
    pub memory_mib: u64,
    pub multiprocessors: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvLink {
    pub link: u32,
    /// Sysfs form.
    pub remote_pci_address: String,
}

/// Reads everything; also returns each GPU's handle (in `gpus` order), which events name.
pub fn read(lib: &Library) -> Result<(Reading, Vec<super::library::Device>), NvmlError> {
    let driver_version = clean(&lib.driver_version()?);
    let cuda = lib.cuda_version()?.max(0) as u32;
    let count = lib.count()?;
    let mut gpus = Vec::new();
    let mut handles = Vec::new();
    for index in 0..count {
        let d = lib.device(index)?;
        let memory_bytes = lib.memory_total(d)?;
        let mig_mode = match lib.mig_enabled(d)? {
            None => MigMode::Unsupported,
            Some(false) => MigMode::Disabled,
            Some(true) => MigMode::Enabled,
        };
        let mig_devices = if mig_mode == MigMode::Enabled {
            read_mig_devices(lib, d, memory_bytes)?
        } else {
            Vec::new()
        };
        gpus.push(Gpu {
            index,
            uuid: clean(&lib.uuid(d)?),
            minor: lib.minor(d)?,
            pci_address: sysfs_address(&lib.pci_bus_id(d)?),
            name: clean(&lib.name(d)?),
            memory_mib: memory_bytes >> 20,
            compute_capability: lib.compute_capability(d)?,
            mig_mode,
            mig_devices,
            nvlinks: read_nvlinks(lib, d)?,
        });
        handles.push(d);
    }
    Ok((
        Reading {
            driver_version,
            cuda_version: (cuda / 1000, (cuda % 1000) / 10),
            gpus,
        },
        handles,
    ))
}

fn read_mig_devices(
    lib: &Library,
    gpu: super::library::Device,
    gpu_memory_bytes: u64,
) -> Result<Vec<MigDevice>, NvmlError> {
    let mut out = Vec::new();
    for slot in 0..lib.max_mig_devices(gpu)? {
        let Some(mig) = lib.mig_device(gpu, slot)? else {
            continue;
        };
        let (gpu_instance_id, compute_instance_id) = lib.instance_ids(mig)?;
        let a = lib.attributes(mig)?;
        out.push(MigDevice {
            uuid: clean(&lib.uuid(mig)?),
            profile: profile_name(
                a.gpu_instance_slice_count,
                a.compute_instance_slice_count,
                a.memory_size_mb,
                gpu_memory_bytes,
            ),
            gpu_instance_id,
            compute_instance_id,
            gpu_slices: a.gpu_instance_slice_count,
            compute_slices: a.compute_instance_slice_count,
            memory_mib: a.memory_size_mb,
            multiprocessors: a.multiprocessor_count,
        });
    }
    Ok(out)
}

/// Active links, until NVML says the GPU has no more (or none at all).
fn read_nvlinks(lib: &Library, gpu: super::library::Device) -> Result<Vec<NvLink>, NvmlError> {
    let mut out = Vec::new();
    for link in 0..MAX_NVLINKS {
        match lib.nvlink_remote(gpu, link) {
            Ok(Some(remote)) => out.push(NvLink {
                link,
                remote_pci_address: sysfs_address(&remote),
            }),
            Ok(None) => {}
            Err(e) if e.code == ERROR_NOT_SUPPORTED || e.code == ERROR_INVALID_ARGUMENT => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A MIG profile's name as NVIDIA's tools and device plug-in give it (go-nvlib's
/// rounding): memory as the fraction of the GPU's, rounded up to eighths, times the GPU's
/// memory in whole GB, rounded. So an H100 80GB's 9856 MiB instance is `1g.10gb`, not
/// `1g.9gb`, and an H200's one-slice instance `1g.18gb`.
pub fn profile_name(
    gpu_slices: u32,
    compute_slices: u32,
    memory_mib: u64,
    gpu_bytes: u64,
) -> String {
    const GIB: u64 = 1 << 30;
    let gb = if gpu_bytes == 0 {
        memory_mib.div_ceil(1024)
    } else {
        let fraction = (memory_mib as f64 * (1u64 << 20) as f64) / gpu_bytes as f64;
        let eighths = (fraction * 8.0).ceil() / 8.0;
        let total_gb = gpu_bytes.div_ceil(GIB) as f64;
        (eighths * total_gb).round() as u64
    };
    if compute_slices == gpu_slices {
        format!("{gpu_slices}g.{gb}gb")
    } else {
        format!("{compute_slices}c.{gpu_slices}g.{gb}gb")
    }
}

/// `00000000:18:00.0` (NVML) → `0000:18:00.0` (sysfs); anything else lower-cased as is.
pub fn sysfs_address(bus_id: &str) -> String {
    let lower = clean(bus_id).to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() == 8 && domain.starts_with("0000") => {
            format!("{}:{rest}", &domain[4..])
        }
        _ => lower,
    }
}

/// NVML text as guests may see it: printable, bounded.
fn clean(text: &str) -> String {
    crate::guest_text::clean_to(text, MAX_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_match_nvidias() {
        let h100 = 81559u64 << 20;
        assert_eq!(profile_name(1, 1, 9856, h100), "1g.10gb");
        assert_eq!(profile_name(2, 2, 19968, h100), "2g.20gb");
        assert_eq!(profile_name(3, 3, 40192, h100), "3g.40gb");
        assert_eq!(profile_name(7, 7, 80896, h100), "7g.80gb");
        assert_eq!(profile_name(3, 1, 40192, h100), "1c.3g.40gb");
        let a100_40 = 40536u64 << 20;
        assert_eq!(profile_name(1, 1, 4864, a100_40), "1g.5gb");
        assert_eq!(profile_name(3, 3, 19968, a100_40), "3g.20gb");
        // The H200 of tests/device/h200-2026-11-29.log (143771 MiB): one slice is 1g.18gb.
        let h200 = 143771u64 << 20;
        assert_eq!(profile_name(1, 1, 16384, h200), "1g.18gb");
        assert_eq!(profile_name(7, 7, 143360, h200), "7g.141gb");
    }

    #[test]
    fn bus_ids_take_the_sysfs_form() {
        assert_eq!(sysfs_address("00000000:18:00.0"), "0000:18:00.0");
        assert_eq!(sysfs_address("00000000:AB:00.0"), "0000:ab:00.0");
        assert_eq!(sysfs_address("0000:18:00.0"), "0000:18:00.0");
    }
}
