//! NVIDIA's management library (NVML) on a simulated node: the test double
//! ([`crate::nvml::DOUBLE_PATH`]) installed where the driver package puts the real one,
//! and the files beside it that the double answers from (their format is documented at
//! the top of `testkit/nvml-double/nvml_double.rs`).
//!
//! What NVML reports follows the rest of the tree: the same GPUs (those bound to `nvidia`
//! and not excluded, which is what the real library sees), UUIDs, minors, PCI addresses
//! and models, NVML index in PCI address order. MIG devices created here also get their
//! procfs and devfs side ([`SimNode::add_mig_instance`]). Every change rewrites the
//! fixture in one step, so a host reading NVML meanwhile sees the old or the new node.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::PathBuf;

use super::SimNode;
use super::dgx::H100_MODEL;
use super::mixed::{A100_MODEL, L40S_MODEL};
use super::nvidia::{SimGpu, uuid};

/// Where the driver package installs the library (Debian/Ubuntu multiarch path).
pub const NVML_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1";
const NVML_DIR: &str = "/usr/lib/x86_64-linux-gnu";
/// The driver NVML reports once enabled (and `/proc/driver/nvidia/version` then says).
pub const NVML_DRIVER_VERSION: &str = "580.159.04";
/// The CUDA version that driver supports, as NVML encodes it (13.0).
pub const NVML_CUDA_VERSION: u32 = 13000;

/// `/proc/driver/nvidia/version` of the open kernel module of [`NVML_DRIVER_VERSION`].
const NVRM_VERSION: &str = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  \
580.159.04  Release Build  (dvs-builder@U22-I3-AE18-23-3)  Thu Nov 13 00:00:00 UTC 2025\n\
GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";

/// `NVML_NVLINK_MAX_LINKS`; also what an H100 SXM5 has.
const H100_NVLINKS: u32 = 18;
/// NVSwitch on the DGX H100 board: vendor and device as sysfs shows them.
const NVSWITCH_ID: (&str, &str) = ("0x10de\n", "0x22a3\n");
const NVSWITCH_DEVICE_ID: u32 = 0x22a3_10de;
/// How an H100's 18 links spread over the DGX H100's four NVSwitches.
const DGX_LINKS_PER_SWITCH: [u32; 4] = [5, 4, 4, 5];
/// MIG slices (and devices) a GPU has.
const MIG_SLICES: u32 = 7;

/// What NVML says of a GPU model beyond sysfs.
struct Model {
    name: &'static str,
    /// PCI device and subsystem device ids (vendor `10de`), as in the nodes' sysfs.
    device: u16,
    subsystem: u16,
    memory_mib: u64,
    compute_capability: (u32, u32),
    mig_capable: bool,
    /// NVLink ports (0: none).
    nvlinks: u32,
}

const MODELS: [Model; 4] = [
    Model {
        name: H100_MODEL,
        device: 0x2330,
        subsystem: 0x16c1,
        memory_mib: 81559,
        compute_capability: (9, 0),
        mig_capable: true,
        nvlinks: H100_NVLINKS,
    },
    Model {
        name: L40S_MODEL,
        device: 0x26b9,
        subsystem: 0x1851,
        memory_mib: 46068,
        compute_capability: (8, 9),
        mig_capable: false,
        nvlinks: 0,
    },
    Model {
        name: A100_MODEL,
        device: 0x20b5,
        subsystem: 0x1533,
        memory_mib: 81920,
        compute_capability: (8, 0),
        mig_capable: true,
        // Three NVLink bridges of four links each.
        nvlinks: 12,
    },
    Model {
        name: "NVIDIA A100-SXM4-80GB",
        device: 0x20b2,
        subsystem: 0x1463,
        memory_mib: 81920,
        compute_capability: (8, 0),
        mig_capable: true,
        nvlinks: 12,
    },
];

fn model(gpu: &SimGpu) -> io::Result<&'static Model> {
    MODELS.iter().find(|m| m.name == gpu.model).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the NVML double knows no model `{}`", gpu.model),
        )
    })
}

/// A MIG profile: the size of a GPU instance and of the compute instance inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigProfile {
    /// As NVIDIA's tools name it, e.g. `1g.10gb`.
    pub name: &'static str,
    pub gi_slices: u32,
    pub ci_slices: u32,
    pub memory_mib: u64,
    pub multiprocessors: u32,
    /// Shared engines: copy engines, video decoders and encoders, JPEG decoders,
    /// optical-flow accelerators.
    pub copy_engines: u32,
    pub decoders: u32,
    pub encoders: u32,
    pub jpeg_decoders: u32,
    pub ofa: u32,
}

impl MigProfile {
    /// H100 80GB profiles (`nvidia-smi mig -lgip`), one compute instance of the whole GPU
    /// instance each.
    pub const H100_1G_10GB: MigProfile = MigProfile::h100("1g.10gb", 1, 9856, 16, 1);
    pub const H100_2G_20GB: MigProfile = MigProfile::h100("2g.20gb", 2, 19968, 32, 2);
    pub const H100_3G_40GB: MigProfile = MigProfile::h100("3g.40gb", 3, 40192, 60, 3);
    pub const H100_7G_80GB: MigProfile = MigProfile {
        ofa: 1,
        copy_engines: 8,
        ..MigProfile::h100("7g.80gb", 7, 80896, 132, 7)
    };

    /// An H100 profile: one decoder and JPEG decoder per slice, no encoder, no OFA.
    const fn h100(
        name: &'static str,
        slices: u32,
        memory_mib: u64,
        multiprocessors: u32,
        copy_engines: u32,
    ) -> MigProfile {
        MigProfile {
            name,
            gi_slices: slices,
            ci_slices: slices,
            memory_mib,
            multiprocessors,
            copy_engines,
            decoders: slices,
            encoders: 0,
            jpeg_decoders: slices,
            ofa: 0,
        }
    }
}

/// A MIG device created by [`SimNode::enable_mig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimMigDevice {
    /// `MIG-<uuid>`.
    pub uuid: String,
    pub profile: MigProfile,
    pub gpu_instance: u32,
    pub compute_instance: u32,
}

/// What the node's NVML says beyond the GPUs' own facts; kept so that every rewrite of
/// the fixture describes the same node.
#[derive(Debug, Default)]
pub(crate) struct NvmlState {
    /// The installed library, once [`SimNode::enable_nvml`] ran.
    library: Option<PathBuf>,
    init_error: Option<u32>,
    /// MIG mode and devices per GPU address; a GPU absent here has MIG disabled (when its
    /// model supports MIG at all).
    mig: BTreeMap<String, GpuMig>,
    /// Direct GPU-to-GPU links set by [`SimNode::set_nvlink_pairs`]: `(a, b, links)`.
    /// `None`: the node's own wiring (the DGX H100's NVSwitches).
    nvlink_pairs: Option<Vec<(String, String, u32)>>,
}

#[derive(Debug, Default)]
struct GpuMig {
    enabled: bool,
    /// In NVML order (the slot is the position).
    devices: Vec<SimMigDevice>,
}

/// One active NVLink: from a GPU's port to a remote PCI function.
struct Link {
    number: u32,
    remote: String,
    remote_device_id: u32,
}

impl SimNode {
    /// Installs the NVML double at [`NVML_LIBRARY`] in the node's tree with a fixture
    /// describing the node's GPUs, and the matching driver's
    /// `/proc/driver/nvidia/version`. Returns the library's path (under the root): what
    /// a host with this root loads.
    pub fn enable_nvml(&mut self) -> io::Result<PathBuf> {
        let library = self.tree.path(NVML_LIBRARY);
        self.tree.mkdir(NVML_DIR)?;
        let staged = self.tree.staging_path();
        std::fs::copy(crate::nvml::DOUBLE_PATH, &staged)?;
        std::fs::rename(&staged, &library)?;
        self.tree
            .write("/proc/driver/nvidia/version", NVRM_VERSION)?;
        self.nvml.library = Some(library.clone());
        self.write_nvml_fixture()?;
        Ok(library)
    }

    /// The installed NVML library, if [`SimNode::enable_nvml`] ran.
    pub fn nvml_library(&self) -> Option<PathBuf> {
        self.nvml.library.clone()
    }

    /// The GPUs NVML enumerates, in its index order: those bound to `nvidia` and not
    /// excluded, by PCI address.
    pub fn nvml_gpus(&self) -> Vec<&SimGpu> {
        let excluded = self.excluded_lock().clone();
        let mut gpus: Vec<&SimGpu> = self
            .gpus
            .iter()
            .filter(|g| !excluded.contains(&g.address))
            .filter(|g| {
                let driver = self.pci_driver(&g.address).ok().flatten();
                driver.as_deref() == Some("nvidia")
            })
            .collect();
        gpus.sort_by(|a, b| a.address.cmp(&b.address));
        gpus
    }

    /// A GPU's NVML index; `None` when NVML does not see it.
    pub fn nvml_index(&self, address: &str) -> Option<u32> {
        let position = self.nvml_gpus().iter().position(|g| g.address == address)?;
        u32::try_from(position).ok()
    }

    /// The MIG devices of a GPU, in NVML order (empty without MIG).
    pub fn mig_devices(&self, address: &str) -> &[SimMigDevice] {
        self.nvml
            .mig
            .get(address)
            .map_or(&[], |m| m.devices.as_slice())
    }

    /// Enables MIG on a GPU and makes `profiles` its MIG devices, replacing any it had:
    /// GPU instances numbered as the driver hands them out (first free id from 1), one
    /// compute instance (id 0) each, with their procfs capabilities and device nodes.
    /// Returns the devices' `MIG-` UUIDs in NVML order.
    pub fn enable_mig(
        &mut self,
        address: &str,
        profiles: &[MigProfile],
    ) -> io::Result<Vec<String>> {
        let gpu = self.mig_capable_gpu(address)?;
        let slices: u32 = profiles.iter().map(|p| p.gi_slices).sum();
        if slices > MIG_SLICES || profiles.iter().any(|p| p.ci_slices > p.gi_slices) {
            return Err(invalid(format!(
                "{address} cannot hold these MIG profiles ({slices} of {MIG_SLICES} slices)"
            )));
        }
        // Stable per GPU, whatever else the node holds.
        let seed = 0x4d49_4700_0000_u64 + u64::from(gpu.minor) * 0x100;
        self.remove_mig_instances(address)?;
        let mut devices = Vec::new();
        for (gi, profile) in (1_u32..).zip(profiles) {
            let ci = 0;
            self.add_mig_instance(address, gi, ci)?;
            let gpu_uuid = uuid(seed + u64::from(gi) * 0x10 + u64::from(ci));
            devices.push(SimMigDevice {
                uuid: gpu_uuid.replacen("GPU-", "MIG-", 1),
                profile: *profile,
                gpu_instance: gi,
                compute_instance: ci,
            });
        }
        let uuids = devices.iter().map(|d| d.uuid.clone()).collect();
        self.nvml.mig.insert(
            address.to_string(),
            GpuMig {
                enabled: true,
                devices,
            },
        );
        self.write_nvml_fixture()?;
        Ok(uuids)
    }

    /// Sets a GPU's MIG mode without creating instances; disabling also destroys its MIG
    /// devices (and their procfs side).
    pub fn set_mig_mode(&mut self, address: &str, enabled: bool) -> io::Result<()> {
        self.mig_capable_gpu(address)?;
        if !enabled {
            self.remove_mig_instances(address)?;
        }
        let mig = self.nvml.mig.entry(address.to_string()).or_default();
        mig.enabled = enabled;
        if !enabled {
            mig.devices.clear();
        }
        self.write_nvml_fixture()
    }

    /// Replaces the NVLinks with direct GPU-to-GPU links: `(address a, address b, links)`,
    /// numbered from 0 on each GPU in the order given.
    pub fn set_nvlink_pairs(&mut self, pairs: &[(&str, &str, u32)]) -> io::Result<()> {
        let mut used: BTreeMap<&str, u32> = BTreeMap::new();
        for &(a, b, links) in pairs {
            for end in [a, b] {
                let ports = model(self.gpu(end)?)?.nvlinks;
                let n = used.entry(end).or_default();
                *n += links;
                if *n > ports {
                    return Err(invalid(format!("{end} has {ports} NVLinks, not {n}")));
                }
            }
        }
        self.nvml.nvlink_pairs = Some(
            pairs
                .iter()
                .map(|&(a, b, n)| (a.to_string(), b.to_string(), n))
                .collect(),
        );
        self.write_nvml_fixture()
    }

    /// Makes `nvmlInit_v2` fail with NVML error `code` (e.g. 9, driver not loaded), or
    /// succeed again with `None`.
    pub fn set_nvml_init_error(&mut self, code: Option<u32>) -> io::Result<()> {
        self.nvml.init_error = code;
        self.write_nvml_fixture()
    }

    /// While `hang` is set, every NVML query blocks, as on a GPU that wedged the driver.
    pub fn set_nvml_hang(&self, hang: bool) -> io::Result<()> {
        let file = self.nvml_file("nvml-hang")?;
        if hang {
            std::fs::write(file, "")
        } else {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
    }

    /// Reports XID `xid` on a GPU (or one of its MIG devices: GPU and compute instance
    /// ids) through NVML's critical-event API.
    pub fn nvml_xid(&self, address: &str, mig: Option<(u32, u32)>, xid: u64) -> io::Result<()> {
        let uuid = &self.gpu(address)?.uuid;
        let mig = mig.map_or_else(String::new, |(gi, ci)| format!(" {gi} {ci}"));
        self.append_nvml_event(&format!("xid {uuid} {xid}{mig}\n"))
    }

    /// Reports an uncorrectable (double-bit) ECC error on a GPU through NVML's events.
    pub fn nvml_double_bit_ecc(&self, address: &str) -> io::Result<()> {
        let uuid = &self.gpu(address)?.uuid;
        self.append_nvml_event(&format!("double_bit_ecc {uuid}\n"))
    }

    /// Rewrites the fixture from the node (no-op before [`SimNode::enable_nvml`]). Called
    /// by every change NVML would see, binding and exclusion included.
    pub(crate) fn write_nvml_fixture(&self) -> io::Result<()> {
        if self.nvml.library.is_none() {
            return Ok(());
        }
        let text = self.nvml_fixture()?;
        self.tree.write(&format!("{NVML_DIR}/nvml-fixture"), &text)
    }

    fn nvml_fixture(&self) -> io::Result<String> {
        let mut text = format!(
            "# The NVML double's view of this simulated node (see nvml_double.rs).\n\
             driver {NVML_DRIVER_VERSION}\ncuda {NVML_CUDA_VERSION}\n"
        );
        if let Some(code) = self.nvml.init_error {
            let _ = writeln!(text, "init_error {code}");
        }
        let gpus = self.nvml_gpus();
        let links = self.nvlinks(&gpus)?;
        for (index, gpu) in gpus.iter().enumerate() {
            let m = model(gpu)?;
            let mig = self.nvml.mig.get(&gpu.address);
            let mode = match (m.mig_capable, mig.is_some_and(|g| g.enabled)) {
                (false, _) => "unsupported",
                (true, false) => "disabled",
                (true, true) => "enabled",
            };
            let _ = writeln!(
                text,
                "gpu {index} {uuid} {minor} {bus} {device:#x} {subsystem:#x} {memory} {cc_major}.{cc_minor} {mode} {nvlinks} {name}",
                uuid = gpu.uuid,
                minor = gpu.minor,
                bus = nvml_bus_id(&gpu.address),
                device = pci_id(m.device),
                subsystem = pci_id(m.subsystem),
                memory = m.memory_mib << 20,
                cc_major = m.compute_capability.0,
                cc_minor = m.compute_capability.1,
                nvlinks = m.nvlinks,
                name = gpu.model,
            );
            for link in links.get(&gpu.address).into_iter().flatten() {
                let _ = writeln!(
                    text,
                    "nvlink {index} {} {} {:#x}",
                    link.number,
                    nvml_bus_id(&link.remote),
                    link.remote_device_id
                );
            }
            let devices = mig.filter(|g| g.enabled).map(|g| g.devices.as_slice());
            for (slot, d) in devices.unwrap_or_default().iter().enumerate() {
                let p = &d.profile;
                let _ = writeln!(
                    text,
                    "mig {index} {slot} {uuid} {gi} {ci} {gis} {cis} {mem} {sms} {ce} {dec} {enc} {jpg} {ofa} {name}",
                    uuid = d.uuid,
                    gi = d.gpu_instance,
                    ci = d.compute_instance,
                    gis = p.gi_slices,
                    cis = p.ci_slices,
                    mem = p.memory_mib,
                    sms = p.multiprocessors,
                    ce = p.copy_engines,
                    dec = p.decoders,
                    enc = p.encoders,
                    jpg = p.jpeg_decoders,
                    ofa = p.ofa,
                    name = p.name,
                );
            }
        }
        Ok(text)
    }

    /// Active NVLinks per GPU address: the pairs a test set, or else the DGX H100 wiring
    /// (each H100's 18 links spread 5/4/4/5 over four NVSwitches) where the node has it.
    fn nvlinks(&self, gpus: &[&SimGpu]) -> io::Result<BTreeMap<String, Vec<Link>>> {
        let mut links: BTreeMap<String, Vec<Link>> = BTreeMap::new();
        if let Some(pairs) = &self.nvml.nvlink_pairs {
            for (a, b, n) in pairs {
                for (from, to) in [(a, b), (b, a)] {
                    let remote_device_id = pci_id(model(self.gpu(to)?)?.device);
                    let ports = links.entry(self.gpu(from)?.address.clone()).or_default();
                    let first = u32::try_from(ports.len()).unwrap_or(u32::MAX);
                    ports.extend((first..first + n).map(|number| Link {
                        number,
                        remote: to.clone(),
                        remote_device_id,
                    }));
                }
            }
            return Ok(links);
        }
        let switches = self.nvswitches();
        if switches.len() != DGX_LINKS_PER_SWITCH.len() {
            return Ok(links);
        }
        for gpu in gpus
            .iter()
            .filter(|g| model(g).is_ok_and(|m| m.nvlinks == H100_NVLINKS))
        {
            let remotes = switches
                .iter()
                .zip(DGX_LINKS_PER_SWITCH)
                .flat_map(|(switch, n)| std::iter::repeat_n(switch, n as usize));
            let ports = (0..).zip(remotes).map(|(number, switch)| Link {
                number,
                remote: switch.clone(),
                remote_device_id: NVSWITCH_DEVICE_ID,
            });
            links.insert(gpu.address.clone(), ports.collect());
        }
        Ok(links)
    }

    /// The NVSwitches on the node's PCI bus, by address.
    fn nvswitches(&self) -> Vec<String> {
        let functions = self.functions_lock().clone();
        let read = |dir: &str, attr: &str| {
            std::fs::read_to_string(self.tree.path(&format!("{dir}/{attr}"))).unwrap_or_default()
        };
        functions
            .into_iter()
            .filter(|(_, dir)| {
                (read(dir, "vendor").as_str(), read(dir, "device").as_str()) == NVSWITCH_ID
            })
            .map(|(address, _)| address)
            .collect()
    }

    fn mig_capable_gpu(&self, address: &str) -> io::Result<&SimGpu> {
        let gpu = self.gpu(address)?;
        if model(gpu)?.mig_capable {
            Ok(gpu)
        } else {
            Err(invalid(format!("{address} ({}) has no MIG", gpu.model)))
        }
    }

    /// A file beside the installed library; an error before [`SimNode::enable_nvml`].
    fn nvml_file(&self, name: &str) -> io::Result<PathBuf> {
        match &self.nvml.library {
            Some(library) => Ok(library.with_file_name(name)),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the simulated node has no NVML: call enable_nvml first",
            )),
        }
    }

    /// Appends one event line in a single write, so the double never reads half of it.
    fn append_nvml_event(&self, line: &str) -> io::Result<()> {
        let path = self.nvml_file("nvml-events")?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(line.as_bytes())
    }
}

/// `0x<device><vendor>`, NVML's `pciDeviceId` (and `pciSubSystemId`) of an NVIDIA id.
fn pci_id(device: u16) -> u32 {
    u32::from(device) << 16 | 0x10de
}

/// A sysfs PCI address (`0000:9a:00.0`) in NVML's `busId` form (`00000000:9A:00.0`).
pub fn nvml_bus_id(address: &str) -> String {
    let (domain, rest) = address.split_once(':').unwrap_or(("0", address));
    let domain = u32::from_str_radix(domain, 16).unwrap_or(0);
    format!("{domain:08X}:{}", rest.to_uppercase())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
