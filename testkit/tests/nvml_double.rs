//! The NVML double, loaded through its C ABI as the host loads the real library
//! (`dlopen` of the copy in a simulated node's tree): what it reports matches the node,
//! and its failure modes (init errors, a hung driver, small buffers, bad handles) behave
//! as NVML's do. These tests are what makes host tests built on the double trustworthy.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use libloading::Library;
use testkit::{MigProfile, NVML_DRIVER_VERSION, SimNode, nvml_bus_id};

type Device = *mut c_void;
type EventSet = *mut c_void;

const SUCCESS: u32 = 0;
const UNINITIALIZED: u32 = 1;
const INVALID_ARGUMENT: u32 = 2;
const NOT_SUPPORTED: u32 = 3;
const NOT_FOUND: u32 = 6;
const INSUFFICIENT_SIZE: u32 = 7;
const DRIVER_NOT_LOADED: u32 = 9;
const TIMEOUT: u32 = 10;
const UNKNOWN: u32 = 999;

const XID: u64 = 0x8;
const DOUBLE_BIT_ECC: u64 = 0x2;
const WHOLE_GPU: u32 = 0xFFFF_FFFF;

#[repr(C)]
#[derive(Default)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_subsystem_id: c_uint,
    bus_id: [c_char; 32],
}

impl PciInfo {
    fn bus_id(&self) -> String {
        c_text(&self.bus_id)
    }
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
#[derive(Default, Debug, PartialEq, Eq)]
struct Attributes {
    multiprocessors: c_uint,
    copy_engines: c_uint,
    decoders: c_uint,
    encoders: c_uint,
    jpeg: c_uint,
    ofa: c_uint,
    gpu_slices: c_uint,
    compute_slices: c_uint,
    memory_mb: u64,
}

#[repr(C)]
struct EventData {
    device: Device,
    event_type: u64,
    event_data: u64,
    gpu_instance: c_uint,
    compute_instance: c_uint,
}

fn c_text(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// The double loaded from a node's tree, with typed calls of its C functions. Results
/// are NVML return codes, or `Ok` with what the call wrote.
struct Nvml {
    lib: Library,
}

type Getter<T> = unsafe extern "C" fn(Device, *mut T) -> u32;

impl Nvml {
    fn load(path: &Path) -> Nvml {
        // SAFETY: the double has no initialisers that could misbehave on load.
        let lib = unsafe { Library::new(path) }.unwrap();
        Nvml { lib }
    }

    fn load_node(node: &SimNode) -> Nvml {
        Nvml::load(&node.nvml_library().expect("enable_nvml ran"))
    }

    /// The function `name`, which must have NVML's C signature `T`.
    fn f<T: Copy>(&self, name: &str) -> T {
        // SAFETY: every name used below is one of the double's exports with type `T`.
        unsafe { *self.lib.get::<T>(name.as_bytes()).unwrap() }
    }

    fn init(&self) -> u32 {
        unsafe { self.f::<unsafe extern "C" fn() -> u32>("nvmlInit_v2")() }
    }

    fn shutdown(&self) -> u32 {
        unsafe { self.f::<unsafe extern "C" fn() -> u32>("nvmlShutdown")() }
    }

    fn error_string(&self, code: u32) -> String {
        let f = self.f::<unsafe extern "C" fn(u32) -> *const c_char>("nvmlErrorString");
        unsafe { CStr::from_ptr(f(code)) }
            .to_string_lossy()
            .into_owned()
    }

    fn count(&self) -> Result<u32, u32> {
        let f = self.f::<unsafe extern "C" fn(*mut c_uint) -> u32>("nvmlDeviceGetCount_v2");
        let mut n = 0;
        ok(unsafe { f(&mut n) }, n)
    }

    fn handle(&self, index: u32) -> Result<Device, u32> {
        let f = self
            .f::<unsafe extern "C" fn(c_uint, *mut Device) -> u32>("nvmlDeviceGetHandleByIndex_v2");
        let mut device = std::ptr::null_mut();
        ok(unsafe { f(index, &mut device) }, device)
    }

    fn text(&self, name: &str, device: Option<Device>, length: u32) -> Result<String, u32> {
        let mut buffer = vec![0 as c_char; length as usize];
        let ret = match device {
            Some(d) => unsafe {
                self.f::<unsafe extern "C" fn(Device, *mut c_char, c_uint) -> u32>(name)(
                    d,
                    buffer.as_mut_ptr(),
                    length,
                )
            },
            None => unsafe {
                self.f::<unsafe extern "C" fn(*mut c_char, c_uint) -> u32>(name)(
                    buffer.as_mut_ptr(),
                    length,
                )
            },
        };
        ok(ret, ()).map(|()| c_text(&buffer))
    }

    fn uuid(&self, device: Device) -> Result<String, u32> {
        self.text("nvmlDeviceGetUUID", Some(device), 96)
    }

    fn name(&self, device: Device) -> Result<String, u32> {
        self.text("nvmlDeviceGetName", Some(device), 96)
    }

    fn driver_version(&self) -> Result<String, u32> {
        self.text("nvmlSystemGetDriverVersion", None, 80)
    }

    fn cuda_version(&self) -> Result<i32, u32> {
        let f =
            self.f::<unsafe extern "C" fn(*mut c_int) -> u32>("nvmlSystemGetCudaDriverVersion_v2");
        let mut v = 0;
        ok(unsafe { f(&mut v) }, v)
    }

    /// A getter of one value of a device.
    fn get<T: Default>(&self, name: &str, device: Device) -> Result<T, u32> {
        let mut value = T::default();
        ok(
            unsafe { self.f::<Getter<T>>(name)(device, &mut value) },
            value,
        )
    }

    fn minor(&self, device: Device) -> Result<u32, u32> {
        self.get("nvmlDeviceGetMinorNumber", device)
    }

    fn pci(&self, device: Device) -> Result<PciInfo, u32> {
        self.get("nvmlDeviceGetPciInfo_v3", device)
    }

    fn memory(&self, device: Device) -> Result<Memory, u32> {
        self.get("nvmlDeviceGetMemoryInfo", device)
    }

    fn pair(&self, name: &str, device: Device) -> Result<(u32, u32), u32> {
        let f = self.f::<unsafe extern "C" fn(Device, *mut c_uint, *mut c_uint) -> u32>(name);
        let (mut a, mut b) = (0, 0);
        ok(unsafe { f(device, &mut a, &mut b) }, (a, b))
    }

    fn compute_capability(&self, device: Device) -> Result<(u32, u32), u32> {
        self.pair("nvmlDeviceGetCudaComputeCapability", device)
    }

    fn mig_mode(&self, device: Device) -> Result<(u32, u32), u32> {
        self.pair("nvmlDeviceGetMigMode", device)
    }

    fn max_mig(&self, device: Device) -> Result<u32, u32> {
        self.get("nvmlDeviceGetMaxMigDeviceCount", device)
    }

    fn mig_handle(&self, device: Device, index: u32) -> Result<Device, u32> {
        let f = self.f::<unsafe extern "C" fn(Device, c_uint, *mut Device) -> u32>(
            "nvmlDeviceGetMigDeviceHandleByIndex",
        );
        let mut mig = std::ptr::null_mut();
        ok(unsafe { f(device, index, &mut mig) }, mig)
    }

    fn gpu_instance(&self, device: Device) -> Result<u32, u32> {
        self.get("nvmlDeviceGetGpuInstanceId", device)
    }

    fn compute_instance(&self, device: Device) -> Result<u32, u32> {
        self.get("nvmlDeviceGetComputeInstanceId", device)
    }

    fn attributes(&self, device: Device) -> Result<Attributes, u32> {
        self.get("nvmlDeviceGetAttributes_v2", device)
    }

    fn nvlink_active(&self, device: Device, link: u32) -> Result<bool, u32> {
        let f = self.f::<unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> u32>(
            "nvmlDeviceGetNvLinkState",
        );
        let mut active = 7;
        ok(unsafe { f(device, link, &mut active) }, active).map(|a| a == 1)
    }

    fn nvlink_remote(&self, device: Device, link: u32) -> Result<PciInfo, u32> {
        let f = self.f::<unsafe extern "C" fn(Device, c_uint, *mut PciInfo) -> u32>(
            "nvmlDeviceGetNvLinkRemotePciInfo_v2",
        );
        let mut pci = PciInfo::default();
        ok(unsafe { f(device, link, &mut pci) }, pci)
    }

    fn event_set(&self) -> Result<EventSet, u32> {
        let f = self.f::<unsafe extern "C" fn(*mut EventSet) -> u32>("nvmlEventSetCreate");
        let mut set = std::ptr::null_mut();
        ok(unsafe { f(&mut set) }, set)
    }

    fn free_event_set(&self, set: EventSet) -> u32 {
        unsafe { self.f::<unsafe extern "C" fn(EventSet) -> u32>("nvmlEventSetFree")(set) }
    }

    fn supported_events(&self, device: Device) -> Result<u64, u32> {
        self.get("nvmlDeviceGetSupportedEventTypes", device)
    }

    fn register(&self, device: Device, types: u64, set: EventSet) -> u32 {
        let f = self
            .f::<unsafe extern "C" fn(Device, u64, EventSet) -> u32>("nvmlDeviceRegisterEvents");
        unsafe { f(device, types, set) }
    }

    fn wait(&self, set: EventSet, timeout_ms: u32) -> Result<EventData, u32> {
        let f = self.f::<unsafe extern "C" fn(EventSet, *mut EventData, c_uint) -> u32>(
            "nvmlEventSetWait_v2",
        );
        let mut data = EventData {
            device: std::ptr::null_mut(),
            event_type: 0,
            event_data: 0,
            gpu_instance: 0,
            compute_instance: 0,
        };
        ok(unsafe { f(set, &mut data, timeout_ms) }, data)
    }
}

fn ok<T>(ret: u32, value: T) -> Result<T, u32> {
    if ret == SUCCESS { Ok(value) } else { Err(ret) }
}

fn dgx() -> (tempfile::TempDir, SimNode) {
    let dir = tempfile::tempdir().unwrap();
    let mut node = SimNode::dgx_h100(dir.path()).unwrap();
    node.enable_nvml().unwrap();
    (dir, node)
}

/// A DGX H100 node with NVML loaded and initialised.
fn dgx_nvml() -> (tempfile::TempDir, SimNode, Nvml) {
    let (dir, node) = dgx();
    let nvml = Nvml::load_node(&node);
    assert_eq!(nvml.init(), SUCCESS);
    (dir, node, nvml)
}

#[test]
fn the_library_lands_in_the_node_s_tree_with_its_driver() {
    let (dir, node) = dgx();
    let library = node.nvml_library().unwrap();
    assert_eq!(
        library,
        dir.path()
            .join("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
    );
    assert_eq!(library, node.path(testkit::NVML_LIBRARY));
    let read = |p: &str| std::fs::read_to_string(node.path(p)).unwrap();
    assert!(read("/proc/driver/nvidia/version").starts_with(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
    ));
    assert_eq!(read("/sys/class/dmi/id/product_name"), "DGX H100\n");
    assert_eq!(
        std::fs::read_link(node.path("/sys/class/dmi/id")).unwrap(),
        Path::new("../../devices/virtual/dmi/id")
    );
}

#[test]
fn gpus_match_the_simulated_node() {
    let (_dir, node, nvml) = dgx_nvml();
    assert_eq!(nvml.driver_version().unwrap(), NVML_DRIVER_VERSION);
    assert_eq!(nvml.cuda_version().unwrap(), 13000);
    assert_eq!(nvml.count(), Ok(8));
    for (index, gpu) in (0..).zip(node.gpus()) {
        assert_eq!(node.nvml_index(&gpu.address), Some(index));
        let device = nvml.handle(index).unwrap();
        assert_eq!(nvml.uuid(device).unwrap(), gpu.uuid);
        assert_eq!(nvml.minor(device).unwrap(), gpu.minor);
        assert_eq!(nvml.name(device).unwrap(), "NVIDIA H100 80GB HBM3");
        let pci = nvml.pci(device).unwrap();
        let bus = u32::from_str_radix(&gpu.address[5..7], 16).unwrap();
        assert_eq!(pci.bus_id(), nvml_bus_id(&gpu.address));
        assert_eq!(
            pci.bus_id(),
            format!("00000000:{}:00.0", &gpu.address[5..7].to_uppercase())
        );
        assert_eq!(c_text(&pci.bus_id_legacy), gpu.address.to_uppercase());
        assert_eq!((pci.domain, pci.bus, pci.device), (0, bus, 0));
        assert_eq!(
            (pci.pci_device_id, pci.pci_subsystem_id),
            (0x2330_10de, 0x16c1_10de)
        );
        let memory = nvml.memory(device).unwrap();
        assert_eq!(memory.total, 81559 << 20);
        assert_eq!(memory.free + memory.used, memory.total);
        assert_eq!(nvml.compute_capability(device).unwrap(), (9, 0));
        assert_eq!(nvml.mig_mode(device).unwrap(), (0, 0));
        assert_eq!(nvml.max_mig(device).unwrap(), 7);
        assert_eq!(nvml.mig_handle(device, 0), Err(NOT_FOUND));
    }
    assert_eq!(nvml.handle(8), Err(INVALID_ARGUMENT));
}

#[test]
fn mig_devices_match_the_driver_s_instances() {
    let (_dir, mut node) = dgx();
    let a = "0000:18:00.0"; // minor 2
    let b = "0000:9a:00.0"; // minor 4
    let profiles = [
        MigProfile::H100_3G_40GB,
        MigProfile::H100_2G_20GB,
        MigProfile::H100_1G_10GB,
        MigProfile::H100_1G_10GB,
    ];
    let uuids_a = node.enable_mig(a, &profiles).unwrap();
    let uuids_b = node.enable_mig(b, &[MigProfile::H100_7G_80GB]).unwrap();
    assert_eq!(uuids_a.len(), 4);
    assert!(
        uuids_a
            .iter()
            .chain(&uuids_b)
            .all(|u| u.starts_with("MIG-") && u.len() == 40)
    );
    assert_eq!(node.mig_devices(a).len(), 4);
    assert!(node.mig_devices("0000:2a:00.0").is_empty());
    // The driver's side, with its minor numbering: 3 + 135 × minor + 9 × gi (+ 1 + ci).
    let minors = std::fs::read_to_string(node.path("/proc/driver/nvidia-caps/mig-minors")).unwrap();
    for line in [
        "gpu2/gi1/access 282\n",
        "gpu2/gi4/ci0/access 310\n",
        "gpu4/gi1/access 552\n",
    ] {
        assert!(minors.contains(line), "{line:?} in {minors}");
    }
    assert!(node.path("/dev/nvidia-caps/nvidia-cap310").is_file());
    assert!(
        node.path("/proc/driver/nvidia/capabilities/gpu4/mig/gi1/ci0/access")
            .is_file()
    );
    // Too many slices, and a GPU model without MIG, are refused.
    assert!(
        node.enable_mig(a, &[MigProfile::H100_7G_80GB, MigProfile::H100_1G_10GB])
            .is_err()
    );

    let nvml = Nvml::load_node(&node);
    assert_eq!(nvml.init(), SUCCESS);
    let gpu = nvml.handle(node.nvml_index(a).unwrap()).unwrap();
    assert_eq!(nvml.mig_mode(gpu).unwrap(), (1, 1));
    assert_eq!(nvml.max_mig(gpu).unwrap(), 7);
    for (slot, (profile, uuid)) in (0..).zip(profiles.iter().zip(&uuids_a)) {
        let mig = nvml.mig_handle(gpu, slot).unwrap();
        assert_ne!(mig, gpu);
        assert_eq!(&nvml.uuid(mig).unwrap(), uuid);
        assert_eq!(nvml.gpu_instance(mig).unwrap(), slot + 1);
        assert_eq!(nvml.compute_instance(mig).unwrap(), 0);
        assert_eq!(
            nvml.name(mig).unwrap(),
            format!("NVIDIA H100 80GB HBM3 MIG {}", profile.name)
        );
        let attributes = nvml.attributes(mig).unwrap();
        assert_eq!(
            attributes,
            Attributes {
                multiprocessors: profile.multiprocessors,
                copy_engines: profile.copy_engines,
                decoders: profile.decoders,
                encoders: 0,
                jpeg: profile.jpeg_decoders,
                ofa: 0,
                gpu_slices: profile.gi_slices,
                compute_slices: profile.ci_slices,
                memory_mb: profile.memory_mib,
            }
        );
        assert_eq!(nvml.memory(mig).unwrap().total, profile.memory_mib << 20);
        assert_eq!(nvml.pci(mig).unwrap().bus_id(), nvml_bus_id(a));
        assert_eq!(nvml.mig_mode(mig), Err(INVALID_ARGUMENT));
    }
    assert_eq!(
        nvml.attributes(nvml.mig_handle(gpu, 0).unwrap())
            .unwrap()
            .gpu_slices,
        3
    );
    assert_eq!(nvml.mig_handle(gpu, 4), Err(NOT_FOUND));
    assert_eq!(nvml.mig_handle(gpu, 7), Err(INVALID_ARGUMENT));
    assert_eq!(nvml.gpu_instance(gpu), Err(INVALID_ARGUMENT));
    assert_eq!(nvml.compute_instance(gpu), Err(INVALID_ARGUMENT));
    assert_eq!(nvml.attributes(gpu), Err(NOT_SUPPORTED));

    let other = nvml.handle(node.nvml_index(b).unwrap()).unwrap();
    let whole = nvml.mig_handle(other, 0).unwrap();
    assert_eq!(nvml.uuid(whole).unwrap(), uuids_b[0]);
    assert_eq!(nvml.attributes(whole).unwrap().multiprocessors, 132);
    assert_eq!(nvml.mig_handle(other, 1), Err(NOT_FOUND));

    // Disabling MIG (seen at the next enumeration) takes the devices away.
    node.set_mig_mode(b, false).unwrap();
    assert!(node.mig_devices(b).is_empty());
    assert_eq!(nvml.count(), Ok(8));
    assert_eq!(nvml.mig_mode(other).unwrap(), (0, 0));
    assert_eq!(nvml.mig_handle(other, 0), Err(NOT_FOUND));
    assert_eq!(
        nvml.uuid(whole),
        Err(INVALID_ARGUMENT),
        "a stale MIG handle"
    );
    assert!(
        !node
            .path("/proc/driver/nvidia/capabilities/gpu4/mig")
            .exists()
    );
    node.set_mig_mode(b, true).unwrap();
    assert_eq!(nvml.count(), Ok(8));
    assert_eq!(nvml.mig_mode(other).unwrap(), (1, 1));
}

#[test]
fn nvlinks_reach_the_nvswitches_or_the_pairs_set() {
    let (_dir, mut node, nvml) = dgx_nvml();
    let switches = ["E3", "E4", "E5", "E6"];
    for index in 0..8 {
        let gpu = nvml.handle(index).unwrap();
        for link in 0..18 {
            assert_eq!(nvml.nvlink_active(gpu, link), Ok(true));
            let remote = nvml.nvlink_remote(gpu, link).unwrap();
            let switch = match link {
                0..=4 => 0,
                5..=8 => 1,
                9..=12 => 2,
                _ => 3,
            };
            assert_eq!(
                remote.bus_id(),
                format!("00000000:{}:00.0", switches[switch])
            );
            assert_eq!(remote.pci_device_id, 0x22a3_10de);
        }
        assert_eq!(nvml.nvlink_active(gpu, 18), Err(INVALID_ARGUMENT));
        assert_eq!(nvml.nvlink_remote(gpu, 18).err(), Some(INVALID_ARGUMENT));
    }

    let (a, b, c) = ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0");
    node.set_nvlink_pairs(&[(a, b, 4), (a, c, 2)]).unwrap();
    assert!(node.set_nvlink_pairs(&[(a, b, 19)]).is_err());
    assert_eq!(nvml.count(), Ok(8), "re-reads the layout");
    let handle = |address| nvml.handle(node.nvml_index(address).unwrap()).unwrap();
    let remote = |address, link| nvml.nvlink_remote(handle(address), link).unwrap().bus_id();
    for link in 0..4 {
        assert_eq!(remote(a, link), nvml_bus_id(b));
        assert_eq!(remote(b, link), nvml_bus_id(a));
    }
    assert_eq!(remote(a, 4), nvml_bus_id(c));
    assert_eq!(remote(a, 5), nvml_bus_id(c));
    assert_eq!(remote(c, 0), nvml_bus_id(a));
    assert_eq!(
        nvml.nvlink_remote(handle(a), 4).unwrap().pci_device_id,
        0x2330_10de
    );
    assert_eq!(nvml.nvlink_active(handle(a), 6), Ok(false));
    assert_eq!(nvml.nvlink_remote(handle(a), 6).err(), Some(NOT_SUPPORTED));
    assert_eq!(nvml.nvlink_active(handle("0000:db:00.0"), 0), Ok(false));
}

#[test]
fn a_pcie_node_without_nvlink_and_with_an_excluded_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = SimNode::mixed_l40s_a100(dir.path()).unwrap();
    node.enable_nvml().unwrap();
    let nvml = Nvml::load_node(&node);
    assert_eq!(nvml.init(), SUCCESS);
    // `0000:b0:00.0` is excluded: NVML does not see it.
    assert_eq!(nvml.count(), Ok(5));
    assert_eq!(node.nvml_index("0000:b0:00.0"), None);
    let l40s = nvml
        .handle(node.nvml_index("0000:1a:00.0").unwrap())
        .unwrap();
    assert_eq!(nvml.name(l40s).unwrap(), "NVIDIA L40S");
    assert_eq!(nvml.memory(l40s).unwrap().total, 46068 << 20);
    assert_eq!(nvml.compute_capability(l40s).unwrap(), (8, 9));
    assert_eq!(nvml.mig_mode(l40s), Err(NOT_SUPPORTED));
    assert_eq!(nvml.max_mig(l40s), Err(NOT_SUPPORTED));
    assert_eq!(nvml.mig_handle(l40s, 0), Err(NOT_SUPPORTED));
    assert_eq!(nvml.nvlink_active(l40s, 0), Err(NOT_SUPPORTED));
    assert_eq!(
        nvml.pci(l40s).unwrap().pci_device_id,
        0x26b9_10de,
        "the sysfs device id"
    );
    assert!(
        node.enable_mig("0000:1a:00.0", &[MigProfile::H100_1G_10GB])
            .is_err()
    );
    let a100 = nvml
        .handle(node.nvml_index("0000:88:00.0").unwrap())
        .unwrap();
    assert_eq!(nvml.minor(a100).unwrap(), 2);
    assert_eq!(nvml.memory(a100).unwrap().total, 81920 << 20);
    assert_eq!(nvml.compute_capability(a100).unwrap(), (8, 0));
    assert_eq!(nvml.mig_mode(a100).unwrap(), (0, 0));
    assert_eq!(nvml.nvlink_active(a100, 0), Ok(false));

    // Including the GPU again, or unbinding another, shows at the next enumeration.
    node.set_gpu_excluded("0000:b0:00.0", false).unwrap();
    assert_eq!(nvml.count(), Ok(6));
    node.unbind_gpu_driver("0000:1b:00.0").unwrap();
    assert_eq!(nvml.count(), Ok(5));
    assert_eq!(node.nvml_index("0000:3b:00.0"), Some(1));
}

#[test]
fn events_are_delivered_once_to_each_set() {
    let (_dir, node, nvml) = dgx_nvml();
    let set = nvml.event_set().unwrap();
    for index in 0..8 {
        let gpu = nvml.handle(index).unwrap();
        let types = nvml.supported_events(gpu).unwrap();
        assert_eq!(types, XID | DOUBLE_BIT_ECC);
        assert_eq!(nvml.register(gpu, types, set), SUCCESS);
    }
    let gpu0 = nvml.handle(0).unwrap();
    assert_eq!(nvml.register(gpu0, 0x1, set), NOT_SUPPORTED);
    assert_eq!(nvml.wait(set, 20).err(), Some(TIMEOUT));

    let third = &node.gpus()[3].address;
    node.nvml_xid(third, None, 79).unwrap();
    let event = nvml.wait(set, 5000).unwrap();
    assert_eq!(event.device, nvml.handle(3).unwrap());
    assert_eq!((event.event_type, event.event_data), (XID, 79));
    assert_eq!(
        (event.gpu_instance, event.compute_instance),
        (WHOLE_GPU, WHOLE_GPU)
    );
    assert_eq!(nvml.wait(set, 30).err(), Some(TIMEOUT), "delivered once");

    // An event appended while the caller waits arrives within the wait.
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            node.nvml_xid("0000:18:00.0", Some((1, 0)), 31).unwrap();
        });
        let event = nvml.wait(set, 10_000).unwrap();
        assert_eq!(event.device, gpu0);
        assert_eq!((event.event_type, event.event_data), (XID, 31));
        assert_eq!((event.gpu_instance, event.compute_instance), (1, 0));
    });
    node.nvml_double_bit_ecc("0000:ab:00.0").unwrap();
    let event = nvml.wait(set, 5000).unwrap();
    assert_eq!(event.device, nvml.handle(5).unwrap());
    assert_eq!(event.event_type, DOUBLE_BIT_ECC);

    // A second set sees the file from its start, but only for what it registered.
    let only_third = nvml.event_set().unwrap();
    let gpu3 = nvml.handle(3).unwrap();
    assert_eq!(nvml.register(gpu3, XID, only_third), SUCCESS);
    assert_eq!(nvml.wait(only_third, 1000).unwrap().event_data, 79);
    assert_eq!(nvml.wait(only_third, 30).err(), Some(TIMEOUT));

    assert_eq!(nvml.free_event_set(only_third), SUCCESS);
    assert_eq!(nvml.free_event_set(only_third), INVALID_ARGUMENT);
    assert_eq!(nvml.wait(only_third, 0).err(), Some(INVALID_ARGUMENT));
    assert_eq!(nvml.shutdown(), SUCCESS);
    assert_eq!(nvml.wait(set, 0).err(), Some(UNINITIALIZED));
}

#[test]
fn init_errors_and_reference_counting() {
    let (_dir, mut node) = dgx();
    let nvml = Nvml::load_node(&node);
    assert_eq!(nvml.count(), Err(UNINITIALIZED));
    assert_eq!(nvml.shutdown(), UNINITIALIZED);
    node.set_nvml_init_error(Some(DRIVER_NOT_LOADED)).unwrap();
    assert_eq!(nvml.init(), DRIVER_NOT_LOADED);
    assert_eq!(nvml.count(), Err(UNINITIALIZED));
    node.set_nvml_init_error(None).unwrap();
    assert_eq!(nvml.init(), SUCCESS);
    assert_eq!(nvml.init(), SUCCESS);
    assert_eq!(nvml.shutdown(), SUCCESS);
    assert_eq!(nvml.count(), Ok(8), "one init is still open");
    assert_eq!(nvml.shutdown(), SUCCESS);
    assert_eq!(nvml.count(), Err(UNINITIALIZED));

    // A malformed fixture is UNKNOWN (and says why on stderr); none is no driver.
    let fixture = node.nvml_library().unwrap().with_file_name("nvml-fixture");
    let good = std::fs::read_to_string(&fixture).unwrap();
    std::fs::write(&fixture, format!("{good}gpu 8 GPU-x\n")).unwrap();
    assert_eq!(nvml.init(), UNKNOWN);
    std::fs::write(&fixture, good.replace("cuda 13000", "cuda thirteen")).unwrap();
    assert_eq!(nvml.init(), UNKNOWN);
    std::fs::remove_file(&fixture).unwrap();
    assert_eq!(nvml.init(), DRIVER_NOT_LOADED);
    std::fs::write(&fixture, &good).unwrap();
    assert_eq!(nvml.init(), SUCCESS);
    // Broken under a running host: the next enumeration fails, the one after recovers.
    std::fs::write(&fixture, "gpu zero\n").unwrap();
    assert_eq!(nvml.count(), Err(UNKNOWN));
    std::fs::write(&fixture, &good).unwrap();
    assert_eq!(nvml.count(), Ok(8));
}

#[test]
fn two_nodes_load_two_independent_copies() {
    let (_dir_a, mut a) = dgx();
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = SimNode::mixed_l40s_a100(dir_b.path()).unwrap();
    b.enable_nvml().unwrap();
    a.set_nvml_init_error(Some(UNKNOWN)).unwrap();
    let (nvml_a, nvml_b) = (Nvml::load_node(&a), Nvml::load_node(&b));
    assert_eq!(nvml_b.init(), SUCCESS);
    assert_eq!(nvml_a.init(), UNKNOWN);
    assert_eq!(nvml_b.count(), Ok(5));
    a.set_nvml_init_error(None).unwrap();
    assert_eq!(nvml_a.init(), SUCCESS);
    assert_eq!(nvml_a.count(), Ok(8));
    assert_eq!(nvml_b.count(), Ok(5));
}

#[test]
fn a_hung_driver_blocks_queries_until_it_recovers() {
    let (_dir, node, nvml) = dgx_nvml();
    let nvml = Arc::new(nvml);
    let set = nvml.event_set().unwrap();
    let gpu = nvml.handle(0).unwrap();
    assert_eq!(nvml.register(gpu, XID, set), SUCCESS);

    node.set_nvml_hang(true).unwrap();
    let (tx, rx) = mpsc::channel();
    let caller = {
        let nvml = Arc::clone(&nvml);
        std::thread::spawn(move || tx.send(nvml.count()).unwrap())
    };
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(300)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "the query blocks while the driver hangs"
    );
    // Meanwhile an event wait keeps its timeout (and the blocked query holds no lock).
    node.nvml_xid("0000:18:00.0", None, 119).unwrap();
    assert_eq!(nvml.wait(set, 50).err(), Some(TIMEOUT));

    node.set_nvml_hang(false).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(8)));
    caller.join().unwrap();
    assert_eq!(nvml.wait(set, 1000).unwrap().event_data, 119);
}

#[test]
fn bad_arguments_and_small_buffers() {
    let (_dir, node, nvml) = dgx_nvml();
    let gpu = nvml.handle(0).unwrap();
    let uuid = &node.gpus()[0].uuid;
    let exact = u32::try_from(uuid.len()).unwrap() + 1;
    assert_eq!(
        nvml.text("nvmlDeviceGetUUID", Some(gpu), exact).unwrap(),
        *uuid
    );
    assert_eq!(
        nvml.text("nvmlDeviceGetUUID", Some(gpu), exact - 1),
        Err(INSUFFICIENT_SIZE)
    );
    assert_eq!(
        nvml.text("nvmlSystemGetDriverVersion", None, 5),
        Err(INSUFFICIENT_SIZE)
    );
    assert_eq!(
        nvml.text("nvmlDeviceGetName", Some(gpu), 0),
        Err(INSUFFICIENT_SIZE)
    );

    let bogus = 0xdead_usize as Device;
    assert_eq!(nvml.uuid(bogus), Err(INVALID_ARGUMENT));
    assert_eq!(nvml.uuid(std::ptr::null_mut()), Err(INVALID_ARGUMENT));
    assert_eq!(nvml.minor(bogus), Err(INVALID_ARGUMENT));
    assert_eq!(nvml.register(gpu, XID, bogus), INVALID_ARGUMENT);

    // Null out-pointers.
    let count = nvml.f::<unsafe extern "C" fn(*mut c_uint) -> u32>("nvmlDeviceGetCount_v2");
    assert_eq!(unsafe { count(std::ptr::null_mut()) }, INVALID_ARGUMENT);
    let uuid_fn =
        nvml.f::<unsafe extern "C" fn(Device, *mut c_char, c_uint) -> u32>("nvmlDeviceGetUUID");
    assert_eq!(
        unsafe { uuid_fn(gpu, std::ptr::null_mut(), 80) },
        INVALID_ARGUMENT
    );
    let cc = nvml.f::<unsafe extern "C" fn(Device, *mut c_int, *mut c_int) -> u32>(
        "nvmlDeviceGetCudaComputeCapability",
    );
    let mut major = 0;
    assert_eq!(
        unsafe { cc(gpu, &mut major, std::ptr::null_mut()) },
        INVALID_ARGUMENT
    );
    let wait = nvml
        .f::<unsafe extern "C" fn(EventSet, *mut EventData, c_uint) -> u32>("nvmlEventSetWait_v2");
    let set = nvml.event_set().unwrap();
    assert_eq!(
        unsafe { wait(set, std::ptr::null_mut(), 0) },
        INVALID_ARGUMENT
    );

    assert_eq!(nvml.error_string(INSUFFICIENT_SIZE), "Insufficient Size");
    assert_eq!(nvml.error_string(SUCCESS), "Success");
    assert_eq!(nvml.error_string(12345), "Unknown Error");
}
