//! Node labels with GPU Feature Discovery's names and values, so that node selectors
//! written for GFD keep working: product, count, memory, family and compute capability,
//! sharing, machine, MIG capability and strategy (with per-profile labels under `mixed`),
//! driver and CUDA versions. A pure function of what was read, so it is unit-tested.
//! Labels describe the first GPU when models are mixed, as GFD's do.

use crate::config::{Config, MigStrategy};
use crate::enumerate::Gpu;
use crate::mig;
use wdp_guest_sdk::host::nvml::{MigDevice, MigMode, System};
use wdp_guest_sdk::types::Error;

/// What the labels are made of, besides the configuration.
pub struct Facts<'a> {
    /// The node's GPUs, with NVML's records when NVML answered.
    pub gpus: &'a [Gpu],
    /// NVML's reading (driver and CUDA versions); none: sysfs and procfs only.
    pub system: Option<&'a System>,
    /// `/proc/driver/nvidia/version`, read when NVML is absent.
    pub proc_version: Option<&'a str>,
    /// `/sys/class/dmi/id/product_name`.
    pub machine: Option<&'a str>,
}

/// A Kubernetes label value: `[A-Za-z0-9._-]` (anything else, spaces included, becomes
/// `-` as GFD does), starting and ending alphanumeric, at most 63 characters.
pub fn sanitize(value: &str) -> String {
    let ok = |b: &u8| b.is_ascii_alphanumeric();
    let bytes = value.as_bytes();
    let start = bytes.iter().position(ok).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(ok).map_or(start, |e| e + 1);
    let mut out = String::new();
    for &b in &bytes[start..end] {
        if out.len() == 63 {
            break;
        }
        let keep = b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
        out.push(if keep { b as char } else { '-' });
    }
    while out.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.pop();
    }
    out
}

/// GFD's family names by compute capability.
pub fn family(major: u32, minor: u32) -> &'static str {
    match (major, minor) {
        (3, _) => "kepler",
        (5, _) => "maxwell",
        (6, _) => "pascal",
        (7, 0 | 2) => "volta",
        (7, 5) => "turing",
        (8, 0 | 6 | 7) => "ampere",
        (8, 9) => "ada-lovelace",
        (9, _) => "hopper",
        (10 | 12, _) => "blackwell",
        _ => "undefined",
    }
}

/// The driver version in the `NVRM version:` line of `/proc/driver/nvidia/version`
/// (`… Kernel Module  580.159.04  …`; open modules say `… for x86_64  580.159.04 …`).
pub fn proc_driver_version(text: &str) -> Option<&str> {
    text.lines()
        .find(|l| l.starts_with("NVRM version:"))?
        .split_whitespace()
        .find(|t| t.contains('.') && t.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// The labels being built. Not inlined: one call per label keeps the guest small.
struct Out(Vec<(String, String)>);

impl Out {
    /// `nvidia.com/<name><suffix>` = `value`, sanitised.
    #[inline(never)]
    fn put(&mut self, name: &str, suffix: &str, value: &str) {
        self.0
            .push((format!("nvidia.com/{name}{suffix}"), sanitize(value)));
    }

    #[inline(never)]
    fn num(&mut self, name: &str, suffix: &str, value: u64) {
        self.put(name, suffix, &value.to_string());
    }
}

/// The labels, GFD's names with the `nvidia.com/` prefix; none without GPUs.
pub fn labels(config: &Config, facts: &Facts) -> Result<Vec<(String, String)>, Error> {
    let Some(first) = facts.gpus.first() else {
        return Ok(Vec::new());
    };
    let mut out = Out(Vec::new());
    let product = sanitize(&first.model);
    let refs: Vec<&Gpu> = facts.gpus.iter().collect();
    let single = match config.mig_strategy {
        MigStrategy::Single => mig::single_profile(&refs)?,
        _ => None,
    };
    let sharing = &config.sharing.time_slicing;
    let shared = !sharing.resources.is_empty();
    let nvml = first.nvml.as_ref();
    // Each MIG profile with its count (under `single` there is one).
    let mut profiles: Vec<(&MigDevice, u64)> = Vec::new();
    for g in facts.gpus {
        for m in migs(g) {
            match profiles.iter_mut().find(|(p, _)| p.profile == m.profile) {
                Some((_, n)) => *n += 1,
                None => profiles.push((m, 1)),
            }
        }
    }
    let count = match single {
        Some(_) => profiles.first().map_or(0, |(_, n)| *n),
        None => facts.gpus.len() as u64,
    };
    out.num("gpu.count", "", count);
    match single {
        Some(m) => mig_labels(&mut out, "gpu", &product, m),
        None => {
            // GFD marks time-sliced GPUs still advertised under their own name.
            let suffix = if shared && !sharing.rename_by_default {
                "-SHARED"
            } else {
                ""
            };
            out.put("gpu.product", "", &(product.clone() + suffix));
            if let Some(n) = nvml {
                out.num("gpu.memory", "", n.memory_mib);
            }
        }
    }
    let replicas = sharing.resources.first().map_or(1, |e| e.replicas);
    out.num("gpu.replicas", "", replicas.into());
    let strategy = if shared { "time-slicing" } else { "none" };
    out.put("gpu.sharing-strategy", "", strategy);
    if let Some(n) = nvml {
        let (major, minor) = n.compute_capability;
        out.put("gpu.family", "", family(major, minor));
        out.num("gpu.compute.major", "", major.into());
        out.num("gpu.compute.minor", "", minor.into());
    }
    if let Some(machine) = facts.machine.map(sanitize).filter(|m| !m.is_empty()) {
        out.put("gpu.machine", "", &machine);
    }
    if facts.system.is_some() {
        let capable = facts.gpus.iter().any(|g| {
            g.nvml
                .as_ref()
                .is_some_and(|n| !matches!(n.mig_mode, MigMode::Unsupported))
        });
        out.put("mig.capable", "", if capable { "true" } else { "false" });
    }
    let strategy = match config.mig_strategy {
        MigStrategy::None => "none",
        MigStrategy::Single => "single",
        MigStrategy::Mixed => "mixed",
    };
    out.put("mig.strategy", "", strategy);
    let driver = match facts.system {
        Some(s) => Some(s.driver_version.as_str()),
        None => facts.proc_version.and_then(proc_driver_version),
    };
    if let Some(version) = driver {
        // `580.159.04`: major, minor, revision (`.rev` in the older names).
        let mut parts = version.splitn(3, '.');
        for (short, long) in [("major", "major"), ("minor", "minor"), ("rev", "revision")] {
            let part = parts.next().unwrap_or_default();
            out.put("cuda.driver.", short, part);
            out.put("cuda.driver-version.", long, part);
        }
        out.put("cuda.driver-version.full", "", version);
    }
    if let Some(s) = facts.system {
        let (major, minor) = s.cuda_version;
        for (name, value) in [("major", major), ("minor", minor)] {
            out.num("cuda.runtime.", name, value.into());
            out.num("cuda.runtime-version.", name, value.into());
        }
        out.put("cuda.runtime-version.full", "", &format!("{major}.{minor}"));
    }
    if config.mig_strategy == MigStrategy::Mixed {
        for (m, count) in profiles {
            let name = mig::profile_name(&m.profile);
            out.num(&name, ".count", count);
            mig_labels(&mut out, &name, &product, m);
        }
    }
    Ok(out.0)
}

fn migs(g: &Gpu) -> &[MigDevice] {
    g.nvml.as_ref().map_or(&[], |n| &n.mig_devices)
}

/// The labels of one MIG profile under `<name>.` (`gpu` under `single`).
fn mig_labels(out: &mut Out, name: &str, product: &str, m: &MigDevice) {
    out.put(name, ".product", &format!("{product}-MIG-{}", m.profile));
    for (suffix, value) in [
        (".memory", m.memory_mib),
        (".multiprocessors", m.multiprocessors.into()),
        (".slices.gi", m.gpu_slices.into()),
        (".slices.ci", m.compute_slices.into()),
    ] {
        out.num(name, suffix, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{dgx, dgx_nvml, mig};

    fn system(mig_layout: bool) -> System {
        System {
            driver_version: "580.159.04".into(),
            cuda_version: (13, 0),
            gpus: dgx_nvml(mig_layout),
        }
    }

    fn get<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
        labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    #[test]
    fn gfd_names_for_a_dgx_with_nvml() {
        let system = system(false);
        let gpus = dgx(false);
        let facts = Facts {
            gpus: &gpus,
            system: Some(&system),
            proc_version: None,
            machine: Some("DGX H100\n"),
        };
        let l = labels(&Config::default(), &facts).unwrap();
        for (name, value) in [
            ("nvidia.com/gpu.count", "8"),
            ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
            ("nvidia.com/gpu.memory", "81559"),
            ("nvidia.com/gpu.family", "hopper"),
            ("nvidia.com/gpu.compute.major", "9"),
            ("nvidia.com/gpu.compute.minor", "0"),
            ("nvidia.com/gpu.replicas", "1"),
            ("nvidia.com/gpu.sharing-strategy", "none"),
            ("nvidia.com/gpu.machine", "DGX-H100"),
            ("nvidia.com/mig.capable", "true"),
            ("nvidia.com/mig.strategy", "none"),
            ("nvidia.com/cuda.driver.major", "580"),
            ("nvidia.com/cuda.driver.minor", "159"),
            ("nvidia.com/cuda.driver.rev", "04"),
            ("nvidia.com/cuda.driver-version.major", "580"),
            ("nvidia.com/cuda.driver-version.minor", "159"),
            ("nvidia.com/cuda.driver-version.revision", "04"),
            ("nvidia.com/cuda.driver-version.full", "580.159.04"),
            ("nvidia.com/cuda.runtime.major", "13"),
            ("nvidia.com/cuda.runtime.minor", "0"),
            ("nvidia.com/cuda.runtime-version.major", "13"),
            ("nvidia.com/cuda.runtime-version.minor", "0"),
            ("nvidia.com/cuda.runtime-version.full", "13.0"),
        ] {
            assert_eq!(get(&l, name), Some(value), "{name}");
        }
        assert_eq!(l.len(), 23);
        assert!(l.iter().all(|(n, _)| n.starts_with("nvidia.com/")));
    }

    #[test]
    fn mixed_labels_each_profile() {
        let system = system(true);
        let gpus = dgx(true);
        let facts = Facts {
            gpus: &gpus,
            system: Some(&system),
            proc_version: None,
            machine: None,
        };
        let l = labels(&config(r#"{"migStrategy":"mixed"}"#), &facts).unwrap();
        for (name, value) in [
            ("nvidia.com/gpu.count", "8"),
            ("nvidia.com/mig.strategy", "mixed"),
            ("nvidia.com/mig-1g.10gb.count", "7"),
            ("nvidia.com/mig-1g.10gb.memory", "9856"),
            ("nvidia.com/mig-1g.10gb.multiprocessors", "16"),
            ("nvidia.com/mig-1g.10gb.slices.gi", "1"),
            ("nvidia.com/mig-1g.10gb.slices.ci", "1"),
            (
                "nvidia.com/mig-1g.10gb.product",
                "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
            ),
            ("nvidia.com/mig-3g.40gb.count", "2"),
            ("nvidia.com/mig-3g.40gb.memory", "40192"),
            ("nvidia.com/mig-3g.40gb.slices.gi", "3"),
            (
                "nvidia.com/mig-3g.40gb.product",
                "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb",
            ),
        ] {
            assert_eq!(get(&l, name), Some(value), "{name}");
        }
        assert_eq!(get(&l, "nvidia.com/gpu.machine"), None);
        let e = labels(&config(r#"{"migStrategy":"single"}"#), &facts).unwrap_err();
        assert!(wdp_guest_sdk::error::message(e).contains(mig::MIXED_MODES));
    }

    #[test]
    fn single_labels_describe_the_mig_devices() {
        let mut gpus = dgx(false);
        for g in &mut gpus {
            let n = g.nvml.as_mut().unwrap();
            n.mig_mode = MigMode::Enabled;
            n.mig_devices = (1..3)
                .map(|gi| mig(n.index, gi, "3g.40gb", 3, 40192))
                .collect();
        }
        let system = system(false);
        let facts = Facts {
            gpus: &gpus,
            system: Some(&system),
            proc_version: None,
            machine: None,
        };
        let l = labels(&config(r#"{"migStrategy":"single"}"#), &facts).unwrap();
        for (name, value) in [
            ("nvidia.com/gpu.count", "16"),
            (
                "nvidia.com/gpu.product",
                "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb",
            ),
            ("nvidia.com/gpu.memory", "40192"),
            ("nvidia.com/gpu.multiprocessors", "48"),
            ("nvidia.com/gpu.slices.gi", "3"),
            ("nvidia.com/gpu.slices.ci", "3"),
            ("nvidia.com/mig.strategy", "single"),
        ] {
            assert_eq!(get(&l, name), Some(value), "{name}");
        }
    }

    #[test]
    fn without_nvml_what_procfs_tells() {
        let gpus = vec![Gpu {
            model: "NVIDIA H200".into(),
            ..Gpu::default()
        }];
        let version = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  \
                       Release Build  (dvs-builder@U22)  Thu Oct 10 2025\n\
                       GCC version:  gcc version 12.3.0\n";
        let facts = Facts {
            gpus: &gpus,
            system: None,
            proc_version: Some(version),
            machine: None,
        };
        let shared = config(r#"{"sharing":{"timeSlicing":{"resources":[{"replicas":4}]}}}"#);
        let l = labels(&shared, &facts).unwrap();
        assert_eq!(
            get(&l, "nvidia.com/gpu.product"),
            Some("NVIDIA-H200-SHARED")
        );
        assert_eq!(get(&l, "nvidia.com/gpu.replicas"), Some("4"));
        assert_eq!(
            get(&l, "nvidia.com/gpu.sharing-strategy"),
            Some("time-slicing")
        );
        assert_eq!(
            get(&l, "nvidia.com/cuda.driver-version.full"),
            Some("580.159.04")
        );
        for absent in [
            "nvidia.com/gpu.memory",
            "nvidia.com/gpu.family",
            "nvidia.com/mig.capable",
            "nvidia.com/cuda.runtime.major",
        ] {
            assert_eq!(get(&l, absent), None, "{absent}");
        }
        let none = Facts { gpus: &[], ..facts };
        assert!(labels(&shared, &none).unwrap().is_empty());
        assert_eq!(
            proc_driver_version(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar 5 2024\n"
            ),
            Some("550.54.15")
        );
        assert_eq!(proc_driver_version("GCC version: 12.3\n"), None);
    }

    #[test]
    fn values_are_valid_label_values() {
        assert_eq!(sanitize("NVIDIA H100 80GB HBM3"), "NVIDIA-H100-80GB-HBM3");
        assert_eq!(
            sanitize(" (ProLiant) DL380 Gen10+\n"),
            "ProLiant--DL380-Gen10"
        );
        assert_eq!(sanitize("--"), "");
        let long = sanitize(&format!("{}-x", "a".repeat(62)));
        assert_eq!(long, "a".repeat(62));
        assert_eq!(family(8, 9), "ada-lovelace");
        assert_eq!(family(7, 2), "volta");
        assert_eq!(family(7, 1), "undefined");
        assert_eq!(family(12, 0), "blackwell");
        assert_eq!(family(2, 0), "undefined");
    }
}
