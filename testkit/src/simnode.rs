//! A simulated node: the sysfs, procfs and devfs files of a GPU node written under a
//! root directory, for the host's "host root" to point at.
//!
//! Node paths such as `/sys/bus/pci/devices/0000:18:00.0` live at
//! `<root>/sys/bus/pci/devices/0000:18:00.0`. Attribute files use the kernel's exact
//! formats, links are relative like the kernel's, and device nodes are empty plain files
//! (the host's devfs reports those as `char` 0:0). The tree is built with `std` only.
//!
//! Every change is atomic for a reader (files and links are staged outside the tree and
//! renamed into place), so a host may re-enumerate while a test changes the node.

mod dgx;
mod fsx;
mod gpu_faults;
mod infiniband;
mod kmsg;
mod mixed;
mod nvidia;
mod nvml;
mod pci;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use gpu_faults::UnpluggedGpu;
pub use infiniband::{RocePorts, SimNic, SimPort};
pub use nvidia::SimGpu;
pub use nvml::{
    MigProfile, NVML_CUDA_VERSION, NVML_DRIVER_VERSION, NVML_LIBRARY, SimMigDevice, nvml_bus_id,
};
pub use pci::PciFunction;

use fsx::Tree;

/// A simulated node tree under a root directory (which the caller owns and removes).
#[derive(Debug)]
pub struct SimNode {
    tree: Tree,
    gpus: Vec<SimGpu>,
    nics: Vec<SimNic>,
    /// PCI address → canonical node path of every function added.
    functions: Mutex<BTreeMap<String, String>>,
    /// Addresses of GPUs the driver is told to exclude (`GPU Excluded: Yes`).
    excluded: Mutex<BTreeSet<String>>,
    /// The NVML double's view of the node, once enabled.
    nvml: nvml::NvmlState,
}

/// The directories every tree has, even without devices.
const SKELETON: [&str; 7] = [
    "/sys/bus/pci/devices",
    "/sys/bus/pci/drivers",
    "/sys/devices",
    "/sys/class",
    "/sys/kernel/iommu_groups",
    "/proc/driver",
    "/dev",
];

impl SimNode {
    /// A node with no devices: just the skeleton directories.
    pub fn empty(root: &Path) -> io::Result<SimNode> {
        let node = SimNode {
            tree: Tree::new(root)?,
            gpus: Vec::new(),
            nics: Vec::new(),
            functions: Mutex::default(),
            excluded: Mutex::default(),
            nvml: nvml::NvmlState::default(),
        };
        for dir in SKELETON {
            node.tree.mkdir(dir)?;
        }
        Ok(node)
    }

    /// The root directory the node's paths live under.
    pub fn root(&self) -> &Path {
        self.tree.root()
    }

    /// Maps a node path (`/dev/nvidia0`) to its file under the root.
    pub fn path(&self, node_path: &str) -> PathBuf {
        self.tree.path(node_path)
    }

    /// The GPUs of the node in address order (empty for [`SimNode::empty`]).
    pub fn gpus(&self) -> &[SimGpu] {
        &self.gpus
    }

    /// The RDMA NICs of the node in address order.
    pub fn nics(&self) -> &[SimNic] {
        &self.nics
    }

    /// Creates a device node (an empty plain file), e.g. `/dev/nvidia3`.
    pub fn add_dev_node(&self, node_path: &str) -> io::Result<()> {
        check_dev_path(node_path)?;
        self.tree.write(node_path, "")
    }

    /// Removes a device node; a missing one is already removed.
    pub fn remove_dev_node(&self, node_path: &str) -> io::Result<()> {
        check_dev_path(node_path)?;
        self.tree.remove_file(node_path)
    }

    /// Adds devices of an example class for the conformance guest: for each `(id, numa)`
    /// `/sys/class/<class>/<id>/health` (`ok`), `/sys/class/<class>/<id>/numa_node`
    /// (`-1` when `None`) and the node `/dev/<class>/<id>`. Each device directory appears
    /// whole (it is built outside the tree and renamed in); an existing one is replaced.
    pub fn add_widgets(
        &self,
        class: &str,
        ids_with_numa: &[(&str, Option<u32>)],
    ) -> io::Result<()> {
        self.tree.mkdir(&format!("/sys/class/{class}"))?;
        for &(id, numa) in ids_with_numa {
            let staged = self.tree.staging_path();
            std::fs::create_dir(&staged)?;
            std::fs::write(staged.join("health"), "ok\n")?;
            let numa = numa.map_or_else(|| "-1".to_string(), |n| n.to_string());
            std::fs::write(staged.join("numa_node"), format!("{numa}\n"))?;
            let dir = format!("/sys/class/{class}/{id}");
            self.tree.remove_dir(&dir)?;
            self.tree.install_dir(&staged, &dir)?;
            self.add_dev_node(&format!("/dev/{class}/{id}"))?;
        }
        Ok(())
    }

    /// Sets a widget's `health` to `ok` or `failed`.
    pub fn set_widget_health(&self, class: &str, id: &str, healthy: bool) -> io::Result<()> {
        let health = format!("/sys/class/{class}/{id}/health");
        if !self.tree.path(&health).exists() {
            return Err(not_found(format!(
                "no widget {class}/{id} in the simulated node"
            )));
        }
        self.tree
            .write(&health, if healthy { "ok\n" } else { "failed\n" })
    }

    /// Removes a widget's directory (in one step) and its device node.
    pub fn remove_widget(&self, class: &str, id: &str) -> io::Result<()> {
        self.tree.remove_dir(&format!("/sys/class/{class}/{id}"))?;
        self.tree.remove_file(&format!("/dev/{class}/{id}"))
    }

    fn functions_lock(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn excluded_lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.excluded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn check_dev_path(node_path: &str) -> io::Result<()> {
    if node_path.starts_with("/dev/") && !node_path.split('/').any(|c| c == "..") {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{node_path}` is not a path under /dev"),
        ))
    }
}

fn not_found(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, message)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;
    use std::path::Path;

    use super::*;

    fn read(node: &SimNode, path: &str) -> String {
        fs::read_to_string(node.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn link(node: &SimNode, path: &str) -> String {
        fs::read_link(node.path(path))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The canonical node path a link (or path) resolves to.
    fn resolve(node: &SimNode, path: &str) -> String {
        let root = fs::canonicalize(node.root()).unwrap();
        let real = fs::canonicalize(node.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        format!("/{}", real.strip_prefix(&root).unwrap().display())
    }

    fn dgx() -> (tempfile::TempDir, SimNode) {
        let dir = tempfile::tempdir().unwrap();
        let node = SimNode::dgx_h100(dir.path()).unwrap();
        (dir, node)
    }

    #[test]
    fn relative_links_go_through_the_common_ancestor() {
        let rel = |from, to| fsx::relative(from, to).display().to_string();
        assert_eq!(
            rel(
                "/sys/bus/pci/devices",
                "/sys/devices/pci0000:15/0000:15:01.0"
            ),
            "../../../devices/pci0000:15/0000:15:01.0"
        );
        assert_eq!(
            rel(
                "/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0",
                "/sys/bus/pci/drivers/nvidia"
            ),
            "../../../../bus/pci/drivers/nvidia"
        );
        // A link to an ancestor still names it, as sysfs does.
        assert_eq!(
            rel(
                "/sys/devices/p/0000:19:00.0/infiniband/mlx5_0",
                "/sys/devices/p/0000:19:00.0"
            ),
            "../../../0000:19:00.0"
        );
        assert_eq!(rel("/sys/devices/p/a", "/sys/devices/p/b"), "../b");
    }

    #[test]
    fn empty_node_has_only_the_skeleton() {
        let dir = tempfile::tempdir().unwrap();
        let node = SimNode::empty(dir.path()).unwrap();
        assert!(node.gpus().is_empty() && node.nics().is_empty());
        for d in SKELETON {
            assert!(node.path(d).is_dir(), "{d}");
        }
        assert_eq!(
            fs::read_dir(node.path("/sys/bus/pci/devices"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn every_pci_function_links_to_its_canonical_directory() {
        let (_dir, node) = dgx();
        let entries = fs::read_dir(node.path("/sys/bus/pci/devices")).unwrap();
        let mut groups = BTreeSet::new();
        let mut count = 0;
        for entry in entries {
            let address = entry.unwrap().file_name().to_string_lossy().into_owned();
            let bus_link = format!("/sys/bus/pci/devices/{address}");
            let target = link(&node, &bus_link);
            assert!(target.starts_with("../../../devices/pci0000:"), "{target}");
            let canonical = resolve(&node, &bus_link);
            assert_eq!(canonical, node.pci_dir(&address).unwrap());
            assert!(canonical.ends_with(&format!("/{address}")));
            // `driver`: up to /sys, one `..` per level of the canonical path below it.
            let depth = canonical.split('/').count() - 2;
            let driver = link(&node, &format!("{canonical}/driver"));
            assert_eq!(
                driver,
                format!(
                    "{}bus/pci/drivers/{}",
                    "../".repeat(depth),
                    node.pci_driver(&address).unwrap().unwrap()
                )
            );
            assert!(
                resolve(&node, &format!("{canonical}/driver")).starts_with("/sys/bus/pci/drivers/")
            );
            assert_eq!(
                resolve(
                    &node,
                    &format!(
                        "/sys/bus/pci/drivers/{}/{address}",
                        driver.rsplit('/').next().unwrap()
                    )
                ),
                canonical
            );
            let group = resolve(&node, &format!("{canonical}/iommu_group"));
            assert!(group.starts_with("/sys/kernel/iommu_groups/"), "{group}");
            assert!(groups.insert(group.clone()), "{group} shared");
            assert_eq!(
                resolve(&node, &format!("{group}/devices/{address}")),
                canonical
            );
            for (attr, width) in [
                ("vendor", 4),
                ("device", 4),
                ("subsystem_vendor", 4),
                ("subsystem_device", 4),
                ("class", 6),
                ("revision", 2),
            ] {
                let value = read(&node, &format!("{bus_link}/{attr}"));
                assert!(
                    value.starts_with("0x") && value.ends_with('\n') && value.len() == width + 3,
                    "{attr}={value:?}"
                );
            }
            assert_eq!(
                read(&node, &format!("{bus_link}/current_link_speed")),
                "32.0 GT/s PCIe\n"
            );
            assert_eq!(
                read(&node, &format!("{bus_link}/current_link_width")),
                "16\n"
            );
            count += 1;
        }
        // 9 switches × (root port + upstream) + 8×2 + 4 downstream ports, 8 GPUs, 8 NICs, 4 NVSwitches.
        assert_eq!(count, 9 * 2 + 8 * 2 + 4 + 8 + 8 + 4);
    }

    #[test]
    fn gpus_look_like_h100_sxm5() {
        let (_dir, node) = dgx();
        let gpus = node.gpus();
        let addresses: Vec<&str> = gpus.iter().map(|g| g.address.as_str()).collect();
        assert_eq!(
            addresses,
            [
                "0000:18:00.0",
                "0000:2a:00.0",
                "0000:3a:00.0",
                "0000:5d:00.0",
                "0000:9a:00.0",
                "0000:ab:00.0",
                "0000:ba:00.0",
                "0000:db:00.0"
            ]
        );
        let minors: Vec<u32> = gpus.iter().map(|g| g.minor).collect();
        assert!(
            minors.windows(2).any(|w| w[0] > w[1]),
            "minors must not follow address order"
        );
        assert_eq!(
            minors.iter().copied().collect::<BTreeSet<_>>(),
            (0..8).collect()
        );
        assert_eq!(gpus.iter().filter(|g| g.numa_node == 0).count(), 4);
        let uuids: BTreeSet<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(uuids.len(), 8);
        for gpu in gpus {
            let dev = format!("/sys/bus/pci/devices/{}", gpu.address);
            assert_eq!(read(&node, &format!("{dev}/vendor")), "0x10de\n");
            assert_eq!(read(&node, &format!("{dev}/device")), "0x2330\n");
            assert_eq!(read(&node, &format!("{dev}/class")), "0x030200\n");
            assert_eq!(read(&node, &format!("{dev}/subsystem_vendor")), "0x10de\n");
            assert_eq!(read(&node, &format!("{dev}/subsystem_device")), "0x16c1\n");
            assert_eq!(read(&node, &format!("{dev}/revision")), "0xa1\n");
            assert_eq!(
                read(&node, &format!("{dev}/numa_node")),
                format!("{}\n", gpu.numa_node)
            );
            assert_eq!(
                node.pci_driver(&gpu.address).unwrap().as_deref(),
                Some("nvidia")
            );
            let u = &gpu.uuid;
            let groups: Vec<usize> = u
                .trim_start_matches("GPU-")
                .split('-')
                .map(str::len)
                .collect();
            assert!(
                u.starts_with("GPU-")
                    && groups == [8, 4, 4, 4, 12]
                    && u[4..].chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{u}"
            );
            assert!(node.path(&gpu.dev_node()).is_file());
            let info = read(
                &node,
                &format!("/proc/driver/nvidia/gpus/{}/information", gpu.address),
            );
            assert!(
                info.contains(&format!("GPU UUID: \t {u}\n"))
                    && info.contains(&format!("Device Minor: \t {}\n", gpu.minor))
            );
        }
        for ctl in [
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools",
            "nvidia-modeset",
        ] {
            assert!(node.path(&format!("/dev/{ctl}")).is_file(), "{ctl}");
        }
    }

    #[test]
    fn information_file_has_the_driver_format() {
        let (_dir, node) = dgx();
        let gpu = &node.gpus()[0];
        let expected = format!(
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 185\nGPU UUID: \t {}\n\
             Video BIOS: \t 96.00.74.00.11\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n\
             DMA Mask: \t 0xfffffffffffff\nBus Location: \t 0000:18:00.0\nDevice Minor: \t 2\n\
             GPU Firmware: \t 550.54.15\nGPU Excluded:\t No\n",
            gpu.uuid
        );
        assert_eq!(
            read(&node, "/proc/driver/nvidia/gpus/0000:18:00.0/information"),
            expected
        );
        assert!(
            read(&node, "/proc/driver/nvidia/version")
                .starts_with("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15 ")
        );
    }

    #[test]
    fn gpu_and_nic_pairs_share_a_switch() {
        let (_dir, node) = dgx();
        for (gpu, nic) in node.gpus().iter().zip(node.nics()) {
            let g = node.pci_dir(&gpu.address).unwrap();
            let n = node.pci_dir(&nic.address).unwrap();
            let upstream = |p: &str| {
                Path::new(p)
                    .parent()
                    .and_then(Path::parent)
                    .unwrap()
                    .to_path_buf()
            };
            assert_eq!(upstream(&g), upstream(&n));
            let switch = upstream(&g).display().to_string();
            assert_eq!(read(&node, &format!("{switch}/class")), "0x060400\n");
            assert_eq!(read(&node, &format!("{switch}/vendor")), "0x1000\n");
            assert_eq!(
                read(&node, &format!("{n}/numa_node")),
                format!("{}\n", gpu.numa_node)
            );
        }
    }

    #[test]
    fn nvswitches_are_bridges_of_their_own_class() {
        let (_dir, node) = dgx();
        let switches: Vec<String> = fs::read_dir(node.path("/sys/bus/pci/drivers/nvidia"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|a| read(&node, &format!("/sys/bus/pci/devices/{a}/device")) == "0x22a3\n")
            .collect();
        assert_eq!(switches.len(), 4);
        for a in switches {
            assert_eq!(
                read(&node, &format!("/sys/bus/pci/devices/{a}/class")),
                "0x068000\n"
            );
            assert!(!node.path(&format!("/proc/driver/nvidia/gpus/{a}")).exists());
        }
    }

    #[test]
    fn proc_devices_has_the_kernel_format() {
        let (_dir, node) = dgx();
        let text = read(&node, "/proc/devices");
        assert!(text.starts_with("Character devices:\n  1 mem\n"));
        for name in [
            "195 nvidia\n",
            " nvidia-uvm\n",
            " nvidia-caps\n",
            "231 infiniband_verbs\n",
            "\nBlock devices:\n",
        ] {
            assert!(text.contains(name), "{name:?}");
        }
        for line in text.lines().filter(|l| !l.is_empty() && !l.ends_with(':')) {
            let (major, name) = line.split_at(3);
            assert!(
                major.trim_start().parse::<u32>().is_ok() && name.starts_with(' '),
                "{line:?}"
            );
        }
    }

    #[test]
    fn nics_have_rdma_and_network_class_devices() {
        let (_dir, node) = dgx();
        assert_eq!(node.nics().len(), 8);
        let nic = &node.nics()[0];
        assert_eq!(
            (
                nic.address.as_str(),
                nic.ib_device.as_str(),
                nic.netdev.as_str()
            ),
            ("0000:19:00.0", "mlx5_0", "ibp25s0")
        );
        let dev = format!("/sys/bus/pci/devices/{}", nic.address);
        assert_eq!(read(&node, &format!("{dev}/class")), "0x020700\n");
        assert_eq!(read(&node, &format!("{dev}/device")), "0x1021\n");
        assert_eq!(
            node.pci_driver(&nic.address).unwrap().as_deref(),
            Some("mlx5_core")
        );
        let canonical = node.pci_dir(&nic.address).unwrap();
        let ib = "/sys/class/infiniband/mlx5_0";
        assert_eq!(resolve(&node, ib), format!("{canonical}/infiniband/mlx5_0"));
        assert_eq!(
            link(&node, &format!("{canonical}/infiniband/mlx5_0/device")),
            "../../../0000:19:00.0"
        );
        assert_eq!(resolve(&node, &format!("{ib}/device")), canonical);
        assert_eq!(read(&node, &format!("{ib}/node_type")), "1: CA\n");
        assert_eq!(read(&node, &format!("{ib}/hca_type")), "MT4129\n");
        assert_eq!(
            read(&node, &format!("{ib}/node_guid")),
            format!("{}\n", nic.node_guid)
        );
        assert_eq!(
            nic.node_guid.split(':').map(str::len).collect::<Vec<_>>(),
            [4, 4, 4, 4]
        );
        assert_eq!(read(&node, &format!("{ib}/ports/1/state")), "4: ACTIVE\n");
        assert_eq!(
            read(&node, &format!("{ib}/ports/1/phys_state")),
            "5: LinkUp\n"
        );
        assert_eq!(
            read(&node, &format!("{ib}/ports/1/rate")),
            "400 Gb/sec (4X NDR)\n"
        );
        assert_eq!(
            read(&node, &format!("{ib}/ports/1/link_layer")),
            "InfiniBand\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_verbs/uverbs0/ibdev"),
            "mlx5_0\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_verbs/uverbs0/dev"),
            "231:192\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_mad/umad0/dev"),
            "231:0\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_mad/issm0/dev"),
            "231:64\n"
        );
        assert_eq!(resolve(&node, "/sys/class/net/ibp25s0/device"), canonical);
        assert_eq!(read(&node, "/sys/class/net/ibp25s0/type"), "32\n");
        for path in nic
            .dev_nodes()
            .iter()
            .map(String::as_str)
            .chain(["/dev/infiniband/rdma_cm"])
        {
            assert!(node.path(path).is_file(), "{path}");
        }
    }

    fn names(node: &SimNode, dir: &str, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(node.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn connectx6_dx_in_roce_mode_per_function() {
        let (_dir, mut node) = dgx();
        let added = node
            .add_connectx6_dx_roce(0x40, 0, RocePorts::PerFunction)
            .unwrap();
        assert_eq!(node.nics().len(), 10);
        let got: Vec<(&str, &str, u32, &str)> = added
            .iter()
            .map(|n| {
                (
                    n.address.as_str(),
                    n.ib_device.as_str(),
                    n.char_index,
                    n.netdev.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("0000:41:00.0", "mlx5_8", 8, "enp65s0f0np0"),
                ("0000:41:00.1", "mlx5_9", 9, "enp65s0f1np1")
            ]
        );
        for nic in &added {
            let dev = format!("/sys/bus/pci/devices/{}", nic.address);
            assert_eq!(read(&node, &format!("{dev}/class")), "0x020000\n");
            assert_eq!(read(&node, &format!("{dev}/device")), "0x101d\n");
            assert_eq!(read(&node, &format!("{dev}/numa_node")), "0\n");
            let ib = format!("/sys/class/infiniband/{}", nic.ib_device);
            assert_eq!(
                resolve(&node, &format!("{ib}/device")),
                node.pci_dir(&nic.address).unwrap()
            );
            assert_eq!(read(&node, &format!("{ib}/hca_type")), "MT4125\n");
            assert_eq!(
                read(&node, &format!("{ib}/ports/1/link_layer")),
                "Ethernet\n"
            );
            assert_eq!(read(&node, &format!("{ib}/ports/1/state")), "4: ACTIVE\n");
            assert_eq!(
                read(&node, &format!("{ib}/ports/1/gid_attrs/ndevs/0")),
                format!("{}\n", nic.netdev)
            );
            assert_eq!(
                read(&node, &format!("{ib}/ports/1/gid_attrs/types/1")),
                "RoCE v2\n"
            );
            assert!(!node.path(&format!("{ib}/ports/2")).exists());
            assert_eq!(
                read(&node, &format!("/sys/class/net/{}/type", nic.netdev)),
                "1\n"
            );
            assert_eq!(
                resolve(&node, &format!("/sys/class/net/{}/device", nic.netdev)),
                node.pci_dir(&nic.address).unwrap()
            );
            let k = nic.char_index;
            assert_eq!(
                read(
                    &node,
                    &format!("/sys/class/infiniband_verbs/uverbs{k}/ibdev")
                ),
                format!("{}\n", nic.ib_device)
            );
            assert_eq!(
                read(&node, &format!("/sys/class/infiniband_verbs/uverbs{k}/dev")),
                format!("231:{}\n", 192 + k)
            );
            for path in nic.all_dev_nodes() {
                assert!(node.path(&path).is_file(), "{path}");
            }
            assert_eq!(nic.all_dev_nodes().len(), 3);
        }
        // Both functions of the adapter hang off the same root port.
        let parent = |a: &str| {
            Path::new(&node.pci_dir(a).unwrap())
                .parent()
                .unwrap()
                .to_path_buf()
        };
        assert_eq!(parent("0000:41:00.0"), parent("0000:41:00.1"));
        let err = node
            .add_connectx6_dx_roce(0x40, 0, RocePorts::PerFunction)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn connectx6_dx_as_one_dual_port_device() {
        let (_dir, mut node) = dgx();
        let added = node
            .add_connectx6_dx_roce(0xc0, 1, RocePorts::OneDevice)
            .unwrap();
        assert_eq!(added.len(), 1);
        let nic = &added[0];
        assert_eq!(
            (nic.address.as_str(), nic.ib_device.as_str()),
            ("0000:c1:00.0", "mlx5_8")
        );
        let ports: Vec<(u32, u32, &str)> = nic
            .ports
            .iter()
            .map(|p| (p.number, p.umad_index, p.netdev.as_str()))
            .collect();
        assert_eq!(ports, [(1, 8, "enp193s0f0np0"), (2, 9, "enp193s0f1np1")]);
        let ib = "/sys/class/infiniband/mlx5_8";
        assert_eq!(
            read(&node, &format!("{ib}/ports/2/gid_attrs/ndevs/0")),
            "enp193s0f1np1\n"
        );
        assert_eq!(read(&node, "/sys/class/infiniband_mad/umad9/port"), "2\n");
        assert_eq!(
            read(&node, "/sys/class/infiniband_mad/issm9/ibdev"),
            "mlx5_8\n"
        );
        // The second function carries the second port's net interface, no RDMA device.
        let f1 = node.pci_dir("0000:c1:00.1").unwrap();
        assert!(!node.path(&format!("{f1}/infiniband")).exists());
        assert!(node.path(&format!("{f1}/net/enp193s0f1np1")).is_dir());
        assert_eq!(nic.all_dev_nodes().len(), 5);
    }

    #[test]
    fn links_go_down_and_come_back() {
        let (_dir, node) = dgx();
        let ib = "/sys/class/infiniband/mlx5_3/ports/1";
        node.set_link("mlx5_3", 1, false).unwrap();
        assert_eq!(read(&node, &format!("{ib}/state")), "1: DOWN\n");
        assert_eq!(read(&node, &format!("{ib}/phys_state")), "2: Polling\n");
        assert_eq!(read(&node, "/sys/class/net/ibp94s0/operstate"), "down\n");
        node.set_port_state("mlx5_3", 1, "2: INIT", "5: LinkUp")
            .unwrap();
        assert_eq!(read(&node, &format!("{ib}/state")), "2: INIT\n");
        node.set_link("mlx5_3", 1, true).unwrap();
        assert_eq!(read(&node, &format!("{ib}/state")), "4: ACTIVE\n");
        assert_eq!(read(&node, &format!("{ib}/phys_state")), "5: LinkUp\n");
        assert_eq!(read(&node, "/sys/class/net/ibp94s0/operstate"), "up\n");
        assert!(node.set_link("mlx5_3", 2, false).is_err());
        assert!(node.set_link("mlx5_42", 1, false).is_err());
    }

    #[test]
    fn a_node_without_issm() {
        let (_dir, mut node) = dgx();
        node.remove_issm().unwrap();
        assert!(names(&node, "/sys/class/infiniband_mad", "issm").is_empty());
        assert!(names(&node, "/dev/infiniband", "issm").is_empty());
        assert_eq!(names(&node, "/sys/class/infiniband_mad", "umad").len(), 8);
        for nic in node.nics() {
            assert!(!nic.issm);
            assert_eq!(nic.all_dev_nodes().len(), 2);
            let canonical = node.pci_dir(&nic.address).unwrap();
            assert_eq!(
                names(&node, &format!("{canonical}/infiniband_mad"), "issm").len(),
                0
            );
        }
        assert_eq!(fs::read_dir(node.path("/.staging")).unwrap().count(), 0);
    }

    #[test]
    fn character_device_indices_can_be_reversed() {
        let (_dir, mut node) = dgx();
        node.add_connectx6_dx_roce(0x40, 0, RocePorts::PerFunction)
            .unwrap();
        node.add_connectx6_dx_roce(0xc0, 1, RocePorts::PerFunction)
            .unwrap();
        node.reverse_char_indices().unwrap();
        let index = |ib: &str| node.nic(ib).unwrap().char_index;
        assert_eq!(
            (
                index("mlx5_0"),
                index("mlx5_1"),
                index("mlx5_10"),
                index("mlx5_11")
            ),
            (11, 10, 1, 0)
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_verbs/uverbs10/ibdev"),
            "mlx5_1\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_verbs/uverbs1/ibdev"),
            "mlx5_10\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_verbs/uverbs1/dev"),
            "231:193\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_mad/umad10/ibdev"),
            "mlx5_1\n"
        );
        assert_eq!(
            read(&node, "/sys/class/infiniband_mad/issm1/ibdev"),
            "mlx5_10\n"
        );
        assert_eq!(
            names(&node, "/sys/class/infiniband_verbs", "uverbs").len(),
            12
        );
        assert_eq!(names(&node, "/sys/class/infiniband_mad", "").len(), 25);
        assert_eq!(names(&node, "/dev/infiniband", "").len(), 12 * 3 + 1);
        for nic in node.nics() {
            let canonical = node.pci_dir(&nic.address).unwrap();
            assert_eq!(
                names(&node, &format!("{canonical}/infiniband_verbs"), "uverbs"),
                [format!("uverbs{}", nic.char_index)]
            );
            for path in nic.all_dev_nodes() {
                assert!(node.path(&path).is_file(), "{path}");
            }
        }
        assert_eq!(fs::read_dir(node.path("/.staging")).unwrap().count(), 0);
    }

    #[test]
    fn unbinding_and_excluding_a_gpu() {
        let (_dir, node) = dgx();
        let a = "0000:3a:00.0";
        let canonical = node.pci_dir(a).unwrap();
        let info = format!("/proc/driver/nvidia/gpus/{a}/information");
        node.set_gpu_excluded(a, true).unwrap();
        assert!(read(&node, &info).ends_with("GPU Excluded:\t Yes\n"));
        node.unbind_gpu_driver(a).unwrap();
        assert!(fs::symlink_metadata(node.path(&format!("{canonical}/driver"))).is_err());
        assert!(
            fs::symlink_metadata(node.path(&format!("/sys/bus/pci/drivers/nvidia/{a}"))).is_err()
        );
        assert!(!node.path(&format!("/proc/driver/nvidia/gpus/{a}")).exists());
        assert_eq!(node.pci_driver(a).unwrap(), None);
        node.bind_pci_driver(a, "vfio-pci").unwrap();
        assert_eq!(
            resolve(&node, &format!("{canonical}/driver")),
            "/sys/bus/pci/drivers/vfio-pci"
        );
        assert!(!node.path(&info).exists());
        node.bind_pci_driver(a, "nvidia").unwrap();
        node.set_gpu_excluded(a, false).unwrap();
        assert!(read(&node, &info).ends_with("GPU Excluded:\t No\n"));
        assert!(
            node.unbind_gpu_driver("0000:19:00.0").is_err(),
            "a NIC is not a GPU"
        );
    }

    #[test]
    fn dev_nodes_come_and_go() {
        let (_dir, node) = dgx();
        node.remove_dev_node("/dev/nvidia3").unwrap();
        assert!(!node.path("/dev/nvidia3").exists());
        node.remove_dev_node("/dev/nvidia3").unwrap();
        node.add_dev_node("/dev/nvidia3").unwrap();
        assert_eq!(fs::metadata(node.path("/dev/nvidia3")).unwrap().len(), 0);
        assert!(node.add_dev_node("/sys/x").is_err() && node.add_dev_node("/dev/../x").is_err());
    }

    #[test]
    fn widgets() {
        let dir = tempfile::tempdir().unwrap();
        let node = SimNode::empty(dir.path()).unwrap();
        node.add_widgets("widget", &[("w0", Some(1)), ("w1", None)])
            .unwrap();
        assert_eq!(read(&node, "/sys/class/widget/w0/health"), "ok\n");
        assert_eq!(read(&node, "/sys/class/widget/w0/numa_node"), "1\n");
        assert_eq!(read(&node, "/sys/class/widget/w1/numa_node"), "-1\n");
        assert!(node.path("/dev/widget/w1").is_file());
        node.set_widget_health("widget", "w1", false).unwrap();
        assert_eq!(read(&node, "/sys/class/widget/w1/health"), "failed\n");
        node.remove_widget("widget", "w0").unwrap();
        let names: Vec<String> = fs::read_dir(node.path("/sys/class/widget"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["w1"]);
        assert!(!node.path("/dev/widget/w0").exists());
        assert!(node.set_widget_health("widget", "w0", true).is_err());
        assert_eq!(
            fs::read_dir(node.path("/.staging")).unwrap().count(),
            0,
            "nothing left staged"
        );
    }
}
