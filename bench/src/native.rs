//! The NVIDIA guest's `list-devices` and `allocate` (default configuration) compiled
//! natively: a faithful re-implementation of `guests/nvidia-gpu/src/{enumerate,health,
//! allocate,lib}.rs` over the same simulated node. (The guest crate itself cannot be
//! linked natively: it is a `cdylib` whose node access goes through wit-bindgen imports.)
//!
//! The node is read through [`NodeIo`], twice over:
//! - [`HostFns`]: the host's own host-function implementations (`NodeAccess`), called
//!   as plain Rust: the same path resolution, grant checks and file reads the guest's
//!   imports run, without the Wasm boundary. Guest time minus this = the Wasm layer.
//! - [`Direct`]: `std::fs` under the host root, as a native plug-in would read `/sys`.
//!   This minus [`HostFns`] = the sandbox's path resolution and checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasm_device_plugin::grant::Grant;
use wasm_device_plugin::hostfns::NodeAccess;
use wasm_device_plugin::wit::latest::{devfs, kmsg, pci, sysfs};

const NVIDIA_VENDOR: u16 = 0x10de;
const CLASS_VGA: u32 = 0x0300;
const CLASS_3D: u32 = 0x0302;
const XID_FILTER: &str = "NVRM: Xid";
const CONTROL_NODES: [&str; 4] = [
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];
const RECOVERY_QUIET: Duration = Duration::from_secs(300);

/// What the guest gets from `pci::list-devices` (the fields it uses).
#[derive(Debug, Clone)]
pub struct Pci {
    pub address: String,
    pub vendor: u16,
    pub class: u32,
    pub numa_node: Option<u32>,
    pub driver: Option<String>,
    pub physfn: Option<String>,
    pub sysfs_path: String,
}

/// The node as the guest sees it through its imports.
pub trait NodeIo {
    fn list_pci(&mut self) -> Result<Vec<Pci>, String>;
    fn read_file(&mut self, path: &str) -> Result<String, String>;
    fn list_dir(&mut self, path: &str) -> Result<Vec<String>, String>;
    /// `devfs::lookup(path).is_some()`.
    fn dev_exists(&mut self, path: &str) -> Result<bool, String>;
    fn kmsg_new(&mut self, filter: &str) -> Result<Vec<String>, String>;
}

/// Through the host's host-function code, minus Wasm.
pub struct HostFns(pub NodeAccess);

impl HostFns {
    pub fn new(root: &Path, grant: Grant) -> Self {
        Self(NodeAccess::new(
            "nvidia-gpu-native",
            root,
            Arc::new(grant),
            "/var/run/cdi",
        ))
    }
}

fn msg(e: wasm_device_plugin::wit::latest::types::Error) -> String {
    format!("{e:?}")
}

impl NodeIo for HostFns {
    fn list_pci(&mut self) -> Result<Vec<Pci>, String> {
        let devices = pci::Host::list_devices(&mut self.0).map_err(msg)?;
        Ok(devices
            .into_iter()
            .map(|d| Pci {
                address: d.address,
                vendor: d.vendor,
                class: d.class,
                numa_node: d.numa_node,
                driver: d.driver,
                physfn: d.physfn,
                sysfs_path: d.sysfs_path,
            })
            .collect())
    }

    fn read_file(&mut self, path: &str) -> Result<String, String> {
        sysfs::Host::read_file(&mut self.0, path.to_owned()).map_err(msg)
    }

    fn list_dir(&mut self, path: &str) -> Result<Vec<String>, String> {
        sysfs::Host::list_dir(&mut self.0, path.to_owned()).map_err(msg)
    }

    fn dev_exists(&mut self, path: &str) -> Result<bool, String> {
        devfs::Host::lookup(&mut self.0, path.to_owned())
            .map(|n| n.is_some())
            .map_err(msg)
    }

    fn kmsg_new(&mut self, filter: &str) -> Result<Vec<String>, String> {
        kmsg::Host::read_new(&mut self.0, filter.to_owned()).map_err(msg)
    }
}

/// Plain `std::fs` under the root, as a native plug-in reads the node.
pub struct Direct {
    root: PathBuf,
    kmsg_seen: i64,
}

impl Direct {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.canonicalize().unwrap_or_else(|_| root.to_owned()),
            kmsg_seen: -1,
        }
    }

    fn host(&self, node: &str) -> PathBuf {
        self.root.join(node.trim_start_matches('/'))
    }
}

fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

fn parse_hex(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim().strip_prefix("0x")?, 16).ok()
}

impl NodeIo for Direct {
    fn list_pci(&mut self) -> Result<Vec<Pci>, String> {
        let bus = self.host("/sys/bus/pci/devices");
        let mut addresses: Vec<String> = std::fs::read_dir(&bus)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        addresses.sort();
        let mut out = Vec::with_capacity(addresses.len());
        for address in addresses {
            let Ok(dir) = std::fs::canonicalize(bus.join(&address)) else {
                continue;
            };
            let attr = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
            let (Some(vendor), Some(class)) = (
                attr("vendor").and_then(|t| parse_hex(&t)),
                attr("class").and_then(|t| parse_hex(&t)),
            ) else {
                continue;
            };
            // Read like the host does, even where the guest ignores the value.
            let _ = attr("device");
            let _ = attr("subsystem_vendor");
            let _ = attr("subsystem_device");
            let _ = link_name(&dir.join("iommu_group"));
            let numa_node = attr("numa_node")
                .and_then(|t| t.trim().parse::<i64>().ok())
                .and_then(|n| u32::try_from(n).ok());
            out.push(Pci {
                sysfs_path: format!(
                    "/{}",
                    dir.strip_prefix(&self.root).unwrap_or(&dir).display()
                ),
                address,
                vendor: vendor as u16,
                class,
                numa_node,
                driver: link_name(&dir.join("driver")),
                physfn: link_name(&dir.join("physfn")),
            });
        }
        Ok(out)
    }

    fn read_file(&mut self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(self.host(path)).map_err(|e| e.to_string())
    }

    fn list_dir(&mut self, path: &str) -> Result<Vec<String>, String> {
        let mut names: Vec<String> = std::fs::read_dir(self.host(path))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn dev_exists(&mut self, path: &str) -> Result<bool, String> {
        Ok(self.host(path).exists())
    }

    fn kmsg_new(&mut self, filter: &str) -> Result<Vec<String>, String> {
        let text = std::fs::read_to_string(self.host("/dev/kmsg")).map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        for line in text.lines() {
            let Some((head, message)) = line.split_once(';') else {
                continue;
            };
            let Some(seq) = head.split(',').nth(1).and_then(|s| s.parse::<i64>().ok()) else {
                continue;
            };
            if seq <= self.kmsg_seen {
                continue;
            }
            self.kmsg_seen = seq;
            if message.contains(filter) {
                lines.push(message.to_owned());
            }
        }
        Ok(lines)
    }
}

/// The guest's `Gpu` (it builds every field, so this does too, read or not).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Gpu {
    pub address: String,
    pub uuid: String,
    pub minor: u32,
    pub model: String,
    pub numa_node: Option<u32>,
    pub sysfs_path: String,
}

/// One device of the list, as the guest returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub healthy: bool,
    pub numa_nodes: Vec<u32>,
}

/// One container's answer, as the guest builds it.
#[derive(Debug, Clone, Default)]
pub struct Allocation {
    pub envs: Vec<(String, String)>,
    pub devices: Vec<(String, String, String)>,
}

struct Record {
    gpu: Gpu,
    xid: Option<(u32, Instant)>,
    aer: Option<(u64, Option<Instant>)>,
}

/// The guest's state (health memory) and logic.
pub struct NvidiaNative<Io> {
    io: Io,
    records: Vec<Record>,
}

fn parse_information(text: &str) -> Option<(Option<String>, String, u32, bool)> {
    let (mut model, mut uuid, mut minor, mut excluded) = (None, None, None, false);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        match key.trim() {
            "Model" => model = Some(value.to_string()),
            "GPU UUID" => uuid = Some(value.to_string()),
            "Device Minor" => minor = Some(value.parse::<u32>().ok()?),
            "GPU Excluded" | "Blacklisted" => excluded = value.eq_ignore_ascii_case("yes"),
            _ => {}
        }
    }
    Some((model, uuid.filter(|u| !u.is_empty())?, minor?, excluded))
}

fn sort_by_key<T, K: Ord>(items: &mut [T], key: impl Fn(&T) -> K) {
    for i in 1..items.len() {
        let mut j = i;
        while j > 0 && key(&items[j - 1]) > key(&items[j]) {
            items.swap(j - 1, j);
            j -= 1;
        }
    }
}

impl<Io: NodeIo> NvidiaNative<Io> {
    pub fn new(io: Io) -> Self {
        Self {
            io,
            records: Vec::new(),
        }
    }

    /// `enumerate::scan`: offerable GPUs (sorted by minor) and withheld addresses.
    fn scan(&mut self) -> Result<(Vec<Gpu>, Vec<String>), String> {
        let devices = self.io.list_pci()?;
        let mut gpus = Vec::new();
        let mut withheld = Vec::new();
        for dev in &devices {
            let class = dev.class >> 8;
            let is_gpu = dev.vendor == NVIDIA_VENDOR
                && (class == CLASS_VGA || class == CLASS_3D)
                && dev.physfn.is_none();
            if !is_gpu {
                continue;
            }
            if dev.driver.as_deref() != Some("nvidia") {
                withheld.push(dev.address.clone());
                continue;
            }
            let path = format!("/proc/driver/nvidia/gpus/{}/information", dev.address);
            let Some((model, uuid, minor, excluded)) = self
                .io
                .read_file(&path)
                .ok()
                .and_then(|t| parse_information(&t))
            else {
                continue;
            };
            if excluded {
                withheld.push(dev.address.clone());
                continue;
            }
            let mig = self
                .io
                .list_dir(&format!("/proc/driver/nvidia/capabilities/gpu{minor}/mig"))
                .is_ok_and(|entries| entries.iter().any(|e| e.starts_with("gi")));
            if mig {
                withheld.push(dev.address.clone());
                continue;
            }
            gpus.push(Gpu {
                address: dev.address.clone(),
                uuid,
                minor,
                model: model.unwrap_or_default(),
                numa_node: dev.numa_node,
                sysfs_path: dev.sysfs_path.clone(),
            });
        }
        sort_by_key(&mut gpus, |g| g.minor);
        Ok((gpus, withheld))
    }

    /// `list-devices("nvidia.com/gpu")` with the default configuration.
    pub fn list_devices(&mut self) -> Result<Vec<Device>, String> {
        let (gpus, withheld) = self.scan()?;
        let now = Instant::now();
        for address in &withheld {
            self.records.retain(|r| r.gpu.address != *address);
        }
        for gpu in &gpus {
            match self
                .records
                .iter_mut()
                .find(|r| r.gpu.address == gpu.address)
            {
                Some(r) => r.gpu = gpu.clone(),
                None => self.records.push(Record {
                    gpu: gpu.clone(),
                    xid: None,
                    aer: None,
                }),
            }
        }
        // XIDs: the lines are parsed and matched as the guest does.
        if let Ok(lines) = self.io.kmsg_new(XID_FILTER) {
            for line in &lines {
                let Some(rest) = line
                    .find(XID_FILTER)
                    .map(|at| &line[at + XID_FILTER.len()..])
                else {
                    continue;
                };
                let Some((bus, rest)) = rest
                    .trim_start()
                    .strip_prefix('(')
                    .and_then(|r| r.split_once(')'))
                else {
                    continue;
                };
                let bus = bus.strip_prefix("PCI:").unwrap_or(bus);
                let rest = rest.strip_prefix(':').map(str::trim_start).unwrap_or("");
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let Ok(xid) = digits.parse::<u32>() else {
                    continue;
                };
                if let Some(r) = self
                    .records
                    .iter_mut()
                    .find(|r| r.gpu.address.starts_with(bus))
                {
                    r.xid = Some((xid, now));
                }
            }
        }
        let mut assessed: Vec<(Gpu, Vec<String>)> = Vec::with_capacity(self.records.len());
        for i in 0..self.records.len() {
            let gpu = self.records[i].gpu.clone();
            let mut problems = Vec::new();
            if gpus.iter().any(|g| g.address == gpu.address) {
                let dev = format!("/dev/nvidia{}", gpu.minor);
                match self.io.dev_exists(&dev) {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!("device node {dev} is missing")),
                    Err(e) => problems.push(e),
                }
                let mut width = |name: &str| -> Option<u32> {
                    let path = format!("/sys/bus/pci/devices/{}/{name}", gpu.address);
                    self.io.read_file(&path).ok()?.trim().parse().ok()
                };
                if let (Some(current), Some(max)) =
                    (width("current_link_width"), width("max_link_width"))
                    && current < max
                {
                    problems.push(format!("PCIe link degraded to x{current} of x{max}"));
                }
                let aer_path = format!("/sys/bus/pci/devices/{}/aer_dev_fatal", gpu.address);
                if let Ok(text) = self.io.read_file(&aer_path) {
                    let total = text
                        .lines()
                        .find_map(|l| l.strip_prefix("TOTAL_ERR_FATAL "))
                        .and_then(|n| n.trim().parse::<u64>().ok());
                    let r = &mut self.records[i];
                    match (total, &mut r.aer) {
                        (None, _) => problems.push(format!("{aer_path} is unreadable")),
                        (Some(total), Some((last, rose))) => {
                            if total > *last {
                                *rose = Some(now);
                            }
                            *last = total;
                        }
                        (Some(total), None) => r.aer = Some((total, None)),
                    }
                }
            } else {
                problems.push("gone".into());
            }
            let r = &mut self.records[i];
            match r.xid {
                Some((xid, at)) if now.duration_since(at) < RECOVERY_QUIET => {
                    problems.push(format!("XID {xid} reported by the driver"));
                }
                _ => r.xid = None,
            }
            if let Some((count, rose)) = &mut r.aer {
                match rose {
                    Some(at) if now.duration_since(*at) < RECOVERY_QUIET => {
                        problems.push(format!("{count} fatal PCIe AER errors"));
                    }
                    _ => *rose = None,
                }
            }
            assessed.push((gpu, problems));
        }
        sort_by_key(&mut assessed, |a| a.0.minor);
        Ok(assessed
            .into_iter()
            .map(|(gpu, problems)| Device {
                id: gpu.uuid,
                healthy: problems.is_empty(),
                numa_nodes: gpu.numa_node.into_iter().collect(),
            })
            .collect())
    }

    /// The proposed `allocate` (BENCHMARKS.md, "Allocate round trip"): no bus scan. The
    /// GPUs come from the last `list-devices` (the host has just checked every requested
    /// ID against that list), and only the requested GPUs are re-validated by reading
    /// their driver `information` file again (UUID and minor still match), plus the
    /// control-node lookups. Falls back to the full [`allocate`](Self::allocate) when a
    /// GPU is not remembered or changed.
    pub fn allocate_targeted(
        &mut self,
        containers: &[Vec<String>],
    ) -> Result<Vec<Allocation>, String> {
        let mut assigned = Vec::with_capacity(containers.len());
        for ids in containers {
            let mut found: Vec<Gpu> = Vec::with_capacity(ids.len());
            for id in ids {
                let gpu_id = id.split_once("::").map_or(id.as_str(), |(g, _)| g);
                let Some(r) = self.records.iter().find(|r| r.gpu.uuid == gpu_id) else {
                    return self.allocate(containers);
                };
                if found.iter().any(|g| g.address == r.gpu.address) {
                    continue;
                }
                let gpu = r.gpu.clone();
                let path = format!("/proc/driver/nvidia/gpus/{}/information", gpu.address);
                let still = self
                    .io
                    .read_file(&path)
                    .ok()
                    .and_then(|t| parse_information(&t))
                    .is_some_and(|(_, uuid, minor, excluded)| {
                        uuid == gpu.uuid && minor == gpu.minor && !excluded
                    });
                if !still {
                    return self.allocate(containers);
                }
                found.push(gpu);
            }
            assigned.push(found);
        }
        let control: Vec<&str> = CONTROL_NODES
            .into_iter()
            .filter(|p| self.io.dev_exists(p).unwrap_or(false))
            .collect();
        Ok(assigned
            .iter()
            .map(|gpus| Allocation {
                envs: vec![(
                    "NVIDIA_VISIBLE_DEVICES".into(),
                    gpus.iter()
                        .map(|g| g.uuid.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                )],
                devices: gpus
                    .iter()
                    .map(|g| format!("/dev/nvidia{}", g.minor))
                    .chain(control.iter().map(ToString::to_string))
                    .map(|p| (p.clone(), p, "rw".to_string()))
                    .collect(),
            })
            .collect())
    }

    /// `allocate("nvidia.com/gpu", containers)` with the default configuration
    /// (`envvar` and `device-specs`).
    pub fn allocate(&mut self, containers: &[Vec<String>]) -> Result<Vec<Allocation>, String> {
        let (gpus, _) = self.scan()?;
        let mut assigned = Vec::with_capacity(containers.len());
        for ids in containers {
            let mut found: Vec<&Gpu> = Vec::with_capacity(ids.len());
            for id in ids {
                let gpu_id = id.split_once("::").map_or(id.as_str(), |(g, _)| g);
                let gpu = gpus
                    .iter()
                    .find(|g| g.uuid == gpu_id)
                    .ok_or_else(|| format!("device ID `{id}` is not a GPU on this node"))?;
                if !found.iter().any(|g| g.address == gpu.address) {
                    found.push(gpu);
                }
            }
            assigned.push(found);
        }
        let control: Vec<&str> = CONTROL_NODES
            .into_iter()
            .filter(|p| self.io.dev_exists(p).unwrap_or(false))
            .collect();
        Ok(assigned
            .iter()
            .map(|gpus| {
                let uuids: Vec<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
                Allocation {
                    envs: vec![("NVIDIA_VISIBLE_DEVICES".into(), uuids.join(","))],
                    devices: gpus
                        .iter()
                        .map(|g| format!("/dev/nvidia{}", g.minor))
                        .chain(control.iter().map(ToString::to_string))
                        .map(|p| (p.clone(), p, "rw".to_string()))
                        .collect(),
                }
            })
            .collect())
    }
}
