//! NVIDIA GPUs as the driver shows them: the PCI function, the
//! `/proc/driver/nvidia/gpus/<address>/information` file, and `/dev/nvidia<minor>`.

use std::io;

use super::{SimNode, not_found};

/// Driver version written into procfs (the go-nvml DGX H100 mock's).
pub(crate) const DRIVER_VERSION: &str = "550.54.15";

/// One simulated GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimGpu {
    /// PCI address, `DDDD:BB:DD.F`.
    pub address: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// `Device Minor`: N in `/dev/nvidiaN` (deliberately not the address order).
    pub minor: u32,
    pub numa_node: u32,
    /// e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
}

impl SimGpu {
    /// Node path of the GPU's device node, `/dev/nvidia<minor>`.
    pub fn dev_node(&self) -> String {
        format!("/dev/nvidia{}", self.minor)
    }

    fn proc_dir(&self) -> String {
        format!("/proc/driver/nvidia/gpus/{}", self.address)
    }
}

/// The `information` file in the driver's format: key, colon, tabs and a space, value.
pub(crate) fn information(gpu: &SimGpu, irq: u32, excluded: bool) -> String {
    let excluded = if excluded { "Yes" } else { "No" };
    format!(
        "Model: \t\t {model}\n\
         IRQ:   \t\t {irq}\n\
         GPU UUID: \t {uuid}\n\
         Video BIOS: \t 96.00.74.00.11\n\
         Bus Type: \t PCIe\n\
         DMA Size: \t 52 bits\n\
         DMA Mask: \t 0xfffffffffffff\n\
         Bus Location: \t {address}\n\
         Device Minor: \t {minor}\n\
         GPU Firmware: \t {DRIVER_VERSION}\n\
         GPU Excluded:\t {excluded}\n",
        model = gpu.model,
        uuid = gpu.uuid,
        address = gpu.address,
        minor = gpu.minor,
    )
}

/// A deterministic GPU UUID for GPU number `n` of a node.
pub(crate) fn uuid(n: u64) -> String {
    let a = splitmix64(n);
    let b = splitmix64(a);
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SimNode {
    /// The simulated GPU at `address`.
    pub fn gpu(&self, address: &str) -> io::Result<&SimGpu> {
        self.gpus
            .iter()
            .find(|g| g.address == address)
            .ok_or_else(|| not_found(format!("no GPU {address} in the simulated node")))
    }

    /// Unbinds a GPU from the `nvidia` driver: its `driver` link and its procfs directory
    /// disappear (as on `echo <address> > /sys/bus/pci/drivers/nvidia/unbind`); its
    /// device node stays.
    pub fn unbind_gpu_driver(&self, address: &str) -> io::Result<()> {
        self.gpu(address)?;
        self.unbind_pci_driver(address)
    }

    /// Sets `GPU Excluded` in the GPU's information file (`NVreg_ExcludedGpus`).
    pub fn set_gpu_excluded(&self, address: &str, excluded: bool) -> io::Result<()> {
        self.gpu(address)?;
        let mut set = self.excluded_lock();
        if excluded {
            set.insert(address.to_string());
        } else {
            set.remove(address);
        }
        drop(set);
        self.sync_gpu_proc(address)
    }

    /// Makes a GPU's procfs directory (and what NVML sees, once enabled) match its
    /// binding: present (with its current excluded state) while bound to `nvidia`, absent
    /// otherwise. Other addresses: no-op.
    pub(crate) fn sync_gpu_proc(&self, address: &str) -> io::Result<()> {
        let Some((index, gpu)) = self
            .gpus
            .iter()
            .enumerate()
            .find(|(_, g)| g.address == address)
        else {
            return Ok(());
        };
        if self.pci_driver(address)?.as_deref() == Some("nvidia") {
            let excluded = self.excluded_lock().contains(address);
            let irq = 185 + u32::try_from(index).unwrap_or(0) * 4;
            self.tree.write(
                &format!("{}/information", gpu.proc_dir()),
                &information(gpu, irq, excluded),
            )?;
        } else {
            self.tree.remove_dir(&gpu.proc_dir())?;
        }
        self.write_nvml_fixture()
    }

    /// `/proc/driver/nvidia/version` and the driver-wide device nodes.
    pub(crate) fn add_nvidia_driver_files(&self) -> io::Result<()> {
        self.tree.write(
            "/proc/driver/nvidia/version",
            &format!(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {DRIVER_VERSION}  \
                 Tue Mar  5 22:23:56 UTC 2024\n\
                 GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n"
            ),
        )?;
        self.tree.mkdir("/proc/driver/nvidia/gpus")?;
        for node in [
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia-modeset",
        ] {
            self.add_dev_node(node)?;
        }
        Ok(())
    }
}
