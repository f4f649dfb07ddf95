//! The few NVML calls the host makes, bound by hand from `libnvidia-ml.so.1` at run time.
//!
//! A thin binding of exactly the functions [`super::reading`] and [`super::pump`] use
//! (not a general NVML crate), so that what the host asks of the driver is visible in
//! one file, the test double answers exactly this list, and a node whose library lacks
//! one of them is told which. All `unsafe` of the NVML support lives here: every other
//! module calls the safe methods of [`Library`].
//!
//! Layouts and signatures are NVML's (`nvml.h`, stable since the R450 drivers that
//! introduced MIG).

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong, c_void};
use std::path::Path;

/// `nvmlReturn_t` values the host tells apart.
pub const SUCCESS: c_uint = 0;
pub const ERROR_INVALID_ARGUMENT: c_uint = 2;
pub const ERROR_NOT_SUPPORTED: c_uint = 3;
pub const ERROR_NOT_FOUND: c_uint = 6;
pub const ERROR_TIMEOUT: c_uint = 10;

/// `nvmlEventType*` bits the host subscribes to.
pub const EVENT_DOUBLE_BIT_ECC: u64 = 0x2;
pub const EVENT_XID_CRITICAL: u64 = 0x8;
/// `gpuInstanceId`/`computeInstanceId` of an event that concerns the whole GPU.
pub const NO_INSTANCE: c_uint = 0xFFFF_FFFF;
/// NVML's limit on NVLinks per GPU (`NVML_NVLINK_MAX_LINKS`).
pub const MAX_NVLINKS: c_uint = 18;

/// Buffer sizes NVML documents for its strings.
const UUID_BUFFER: usize = 96;
const NAME_BUFFER: usize = 96;
const VERSION_BUFFER: usize = 80;

/// `nvmlDevice_t`: a GPU or a MIG device. Only ever obtained from NVML and handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device(*mut c_void);
// SAFETY: NVML handles are process-wide identifiers; NVML is thread-safe.
unsafe impl Send for Device {}

/// `nvmlEventSet_t`.
#[derive(Debug)]
pub struct EventSet(*mut c_void);
// SAFETY: as for `Device`.
unsafe impl Send for EventSet {}

#[repr(C)]
#[derive(Clone, Copy)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlDeviceAttributes_t` of a MIG device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Attributes {
    pub multiprocessor_count: c_uint,
    pub shared_copy_engine_count: c_uint,
    pub shared_decoder_count: c_uint,
    pub shared_encoder_count: c_uint,
    pub shared_jpeg_count: c_uint,
    pub shared_ofa_count: c_uint,
    pub gpu_instance_slice_count: c_uint,
    pub compute_instance_slice_count: c_uint,
    pub memory_size_mb: c_ulonglong,
}

#[repr(C)]
struct EventData {
    device: *mut c_void,
    event_type: c_ulonglong,
    event_data: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// One event as NVML delivered it.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent {
    pub device: Device,
    pub event_type: u64,
    pub data: u64,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
}

/// A failed NVML call: which, NVML's code and its own words for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call} failed: {message} (NVML error {code})")]
pub struct NvmlError {
    pub call: &'static str,
    pub code: u32,
    pub message: String,
}

type Ret = c_uint;
type Dev = *mut c_void;

/// The resolved entry points. Function pointers stay valid while `_library` is loaded,
/// and it is never unloaded before them (both live in [`Library`]).
struct Entry {
    init: unsafe extern "C" fn() -> Ret,
    error_string: unsafe extern "C" fn(Ret) -> *const c_char,
    driver_version: unsafe extern "C" fn(*mut c_char, c_uint) -> Ret,
    cuda_version: unsafe extern "C" fn(*mut c_int) -> Ret,
    count: unsafe extern "C" fn(*mut c_uint) -> Ret,
    by_index: unsafe extern "C" fn(c_uint, *mut Dev) -> Ret,
    uuid: unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> Ret,
    name: unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> Ret,
    minor: unsafe extern "C" fn(Dev, *mut c_uint) -> Ret,
    pci_info: unsafe extern "C" fn(Dev, *mut PciInfo) -> Ret,
    memory: unsafe extern "C" fn(Dev, *mut Memory) -> Ret,
    compute_capability: unsafe extern "C" fn(Dev, *mut c_int, *mut c_int) -> Ret,
    mig_mode: unsafe extern "C" fn(Dev, *mut c_uint, *mut c_uint) -> Ret,
    max_mig_devices: unsafe extern "C" fn(Dev, *mut c_uint) -> Ret,
    mig_by_index: unsafe extern "C" fn(Dev, c_uint, *mut Dev) -> Ret,
    gpu_instance_id: unsafe extern "C" fn(Dev, *mut c_uint) -> Ret,
    compute_instance_id: unsafe extern "C" fn(Dev, *mut c_uint) -> Ret,
    attributes: unsafe extern "C" fn(Dev, *mut Attributes) -> Ret,
    nvlink_state: unsafe extern "C" fn(Dev, c_uint, *mut c_uint) -> Ret,
    nvlink_remote_pci: unsafe extern "C" fn(Dev, c_uint, *mut PciInfo) -> Ret,
    event_set_create: unsafe extern "C" fn(*mut *mut c_void) -> Ret,
    event_set_free: unsafe extern "C" fn(*mut c_void) -> Ret,
    supported_events: unsafe extern "C" fn(Dev, *mut c_ulonglong) -> Ret,
    register_events: unsafe extern "C" fn(Dev, c_ulonglong, *mut c_void) -> Ret,
    event_wait: unsafe extern "C" fn(*mut c_void, *mut EventData, c_uint) -> Ret,
}

/// The loaded and initialised library.
pub struct Library {
    entry: Entry,
    _library: libloading::Library,
}

/// Why the library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} lacks `{symbol}` (a driver older than R450?)")]
    Symbol { path: String, symbol: &'static str },
    #[error(transparent)]
    Init(#[from] NvmlError),
}

impl Library {
    /// Loads `path` (a file, or a bare name searched like `dlopen` does), resolves every
    /// entry point and calls `nvmlInit_v2`.
    pub fn load(path: &Path) -> Result<Library, LoadError> {
        let shown = path.display().to_string();
        // SAFETY: loading runs the library's initialisers. The library is NVIDIA's
        // driver library from the node (or a test double): code the node already trusts,
        // as the driver itself.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        macro_rules! entry {
            ($($field:ident = $symbol:literal),* $(,)?) => {
                Entry {$(
                    $field: {
                        // SAFETY: the symbol has this C signature in every NVML since R450.
                        let symbol = unsafe { library.get(concat!($symbol, "\0").as_bytes()) }
                            .map_err(|_| LoadError::Symbol { path: shown.clone(), symbol: $symbol })?;
                        *symbol
                    },
                )*}
            };
        }
        let entry = entry! {
            init = "nvmlInit_v2",
            error_string = "nvmlErrorString",
            driver_version = "nvmlSystemGetDriverVersion",
            cuda_version = "nvmlSystemGetCudaDriverVersion_v2",
            count = "nvmlDeviceGetCount_v2",
            by_index = "nvmlDeviceGetHandleByIndex_v2",
            uuid = "nvmlDeviceGetUUID",
            name = "nvmlDeviceGetName",
            minor = "nvmlDeviceGetMinorNumber",
            pci_info = "nvmlDeviceGetPciInfo_v3",
            memory = "nvmlDeviceGetMemoryInfo",
            compute_capability = "nvmlDeviceGetCudaComputeCapability",
            mig_mode = "nvmlDeviceGetMigMode",
            max_mig_devices = "nvmlDeviceGetMaxMigDeviceCount",
            mig_by_index = "nvmlDeviceGetMigDeviceHandleByIndex",
            gpu_instance_id = "nvmlDeviceGetGpuInstanceId",
            compute_instance_id = "nvmlDeviceGetComputeInstanceId",
            attributes = "nvmlDeviceGetAttributes_v2",
            nvlink_state = "nvmlDeviceGetNvLinkState",
            nvlink_remote_pci = "nvmlDeviceGetNvLinkRemotePciInfo_v2",
            event_set_create = "nvmlEventSetCreate",
            event_set_free = "nvmlEventSetFree",
            supported_events = "nvmlDeviceGetSupportedEventTypes",
            register_events = "nvmlDeviceRegisterEvents",
            event_wait = "nvmlEventSetWait_v2",
        };
        let lib = Library {
            entry,
            _library: library,
        };
        // SAFETY: no arguments.
        lib.check("nvmlInit_v2", unsafe { (lib.entry.init)() })?;
        Ok(lib)
    }

    fn check(&self, call: &'static str, code: Ret) -> Result<(), NvmlError> {
        if code == SUCCESS {
            return Ok(());
        }
        // SAFETY: NVML returns a static NUL-terminated string for any code.
        let text = unsafe { (self.entry.error_string)(code) };
        let message = if text.is_null() {
            "unknown error".to_owned()
        } else {
            // SAFETY: non-null, NUL-terminated, static.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        Err(NvmlError {
            call,
            code,
            message,
        })
    }

    /// Calls an NVML string getter with a buffer of `size`.
    fn string(
        &self,
        call: &'static str,
        size: usize,
        get: impl FnOnce(*mut c_char, c_uint) -> Ret,
    ) -> Result<String, NvmlError> {
        let mut buf = vec![0 as c_char; size];
        self.check(call, get(buf.as_mut_ptr(), size as c_uint))?;
        // NUL-terminated within the buffer by contract; the last byte is ours anyway.
        if let Some(last) = buf.last_mut() {
            *last = 0;
        }
        // SAFETY: NUL-terminated (above), and the buffer outlives the borrow.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    pub fn driver_version(&self) -> Result<String, NvmlError> {
        let f = self.entry.driver_version;
        // SAFETY: a writable buffer of the given length.
        self.string(
            "nvmlSystemGetDriverVersion",
            VERSION_BUFFER,
            |b, n| unsafe { f(b, n) },
        )
    }

    /// As NVML encodes it: `1000 * major + 10 * minor`.
    pub fn cuda_version(&self) -> Result<i32, NvmlError> {
        let mut v: c_int = 0;
        // SAFETY: a valid out pointer.
        let code = unsafe { (self.entry.cuda_version)(&mut v) };
        self.check("nvmlSystemGetCudaDriverVersion_v2", code)?;
        Ok(v)
    }

    pub fn count(&self) -> Result<u32, NvmlError> {
        let mut n: c_uint = 0;
        // SAFETY: a valid out pointer.
        let code = unsafe { (self.entry.count)(&mut n) };
        self.check("nvmlDeviceGetCount_v2", code)?;
        Ok(n)
    }

    pub fn device(&self, index: u32) -> Result<Device, NvmlError> {
        let mut d: Dev = std::ptr::null_mut();
        // SAFETY: a valid out pointer.
        let code = unsafe { (self.entry.by_index)(index, &mut d) };
        self.check("nvmlDeviceGetHandleByIndex_v2", code)?;
        Ok(Device(d))
    }

    pub fn uuid(&self, d: Device) -> Result<String, NvmlError> {
        let f = self.entry.uuid;
        // SAFETY: a handle from NVML and a writable buffer of the given length.
        self.string("nvmlDeviceGetUUID", UUID_BUFFER, |b, n| unsafe {
            f(d.0, b, n)
        })
    }

    pub fn name(&self, d: Device) -> Result<String, NvmlError> {
        let f = self.entry.name;
        // SAFETY: as for `uuid`.
        self.string("nvmlDeviceGetName", NAME_BUFFER, |b, n| unsafe {
            f(d.0, b, n)
        })
    }

    pub fn minor(&self, d: Device) -> Result<u32, NvmlError> {
        let mut m: c_uint = 0;
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.minor)(d.0, &mut m) };
        self.check("nvmlDeviceGetMinorNumber", code)?;
        Ok(m)
    }

    /// NVML's bus ID, e.g. `00000000:18:00.0`.
    pub fn pci_bus_id(&self, d: Device) -> Result<String, NvmlError> {
        // SAFETY: plain integers and byte arrays; all-zero is a valid value.
        let mut info: PciInfo = unsafe { std::mem::zeroed() };
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.pci_info)(d.0, &mut info) };
        self.check("nvmlDeviceGetPciInfo_v3", code)?;
        Ok(bus_id(&info.bus_id))
    }

    /// Total memory in bytes.
    pub fn memory_total(&self, d: Device) -> Result<u64, NvmlError> {
        let mut m = Memory::default();
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.memory)(d.0, &mut m) };
        self.check("nvmlDeviceGetMemoryInfo", code)?;
        Ok(m.total)
    }

    pub fn compute_capability(&self, d: Device) -> Result<(u32, u32), NvmlError> {
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: a handle from NVML and valid out pointers.
        let code = unsafe { (self.entry.compute_capability)(d.0, &mut major, &mut minor) };
        self.check("nvmlDeviceGetCudaComputeCapability", code)?;
        Ok((major.max(0) as u32, minor.max(0) as u32))
    }

    /// The current MIG mode; `None` when the GPU does not support MIG.
    pub fn mig_enabled(&self, d: Device) -> Result<Option<bool>, NvmlError> {
        let (mut current, mut pending): (c_uint, c_uint) = (0, 0);
        // SAFETY: a handle from NVML and valid out pointers.
        let code = unsafe { (self.entry.mig_mode)(d.0, &mut current, &mut pending) };
        if code == ERROR_NOT_SUPPORTED {
            return Ok(None);
        }
        self.check("nvmlDeviceGetMigMode", code)?;
        Ok(Some(current == 1))
    }

    pub fn max_mig_devices(&self, d: Device) -> Result<u32, NvmlError> {
        let mut n: c_uint = 0;
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.max_mig_devices)(d.0, &mut n) };
        self.check("nvmlDeviceGetMaxMigDeviceCount", code)?;
        Ok(n)
    }

    /// The MIG device in slot `index`; `None` for an empty slot.
    pub fn mig_device(&self, d: Device, index: u32) -> Result<Option<Device>, NvmlError> {
        let mut m: Dev = std::ptr::null_mut();
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.mig_by_index)(d.0, index, &mut m) };
        if code == ERROR_NOT_FOUND {
            return Ok(None);
        }
        self.check("nvmlDeviceGetMigDeviceHandleByIndex", code)?;
        Ok(Some(Device(m)))
    }

    /// GPU and compute instance ids of a MIG device.
    pub fn instance_ids(&self, mig: Device) -> Result<(u32, u32), NvmlError> {
        let (mut gi, mut ci): (c_uint, c_uint) = (0, 0);
        // SAFETY: a handle from NVML and valid out pointers.
        let code = unsafe { (self.entry.gpu_instance_id)(mig.0, &mut gi) };
        self.check("nvmlDeviceGetGpuInstanceId", code)?;
        // SAFETY: as above.
        let code = unsafe { (self.entry.compute_instance_id)(mig.0, &mut ci) };
        self.check("nvmlDeviceGetComputeInstanceId", code)?;
        Ok((gi, ci))
    }

    pub fn attributes(&self, mig: Device) -> Result<Attributes, NvmlError> {
        let mut a = Attributes::default();
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.attributes)(mig.0, &mut a) };
        self.check("nvmlDeviceGetAttributes_v2", code)?;
        Ok(a)
    }

    /// The remote end of `link` if it is active; `None` when inactive, and `Err` with
    /// [`ERROR_NOT_SUPPORTED`] or [`ERROR_INVALID_ARGUMENT`] past the GPU's links.
    pub fn nvlink_remote(&self, d: Device, link: u32) -> Result<Option<String>, NvmlError> {
        let mut active: c_uint = 0;
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.nvlink_state)(d.0, link, &mut active) };
        self.check("nvmlDeviceGetNvLinkState", code)?;
        if active == 0 {
            return Ok(None);
        }
        // SAFETY: plain integers and byte arrays; all-zero is a valid value.
        let mut info: PciInfo = unsafe { std::mem::zeroed() };
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.nvlink_remote_pci)(d.0, link, &mut info) };
        self.check("nvmlDeviceGetNvLinkRemotePciInfo_v2", code)?;
        Ok(Some(bus_id(&info.bus_id)))
    }

    pub fn event_set(&self) -> Result<EventSet, NvmlError> {
        let mut set: *mut c_void = std::ptr::null_mut();
        // SAFETY: a valid out pointer.
        let code = unsafe { (self.entry.event_set_create)(&mut set) };
        self.check("nvmlEventSetCreate", code)?;
        Ok(EventSet(set))
    }

    pub fn free_event_set(&self, set: EventSet) {
        // SAFETY: a set from `event_set`, freed once (consumed).
        let _ = unsafe { (self.entry.event_set_free)(set.0) };
    }

    /// Registers `d` for those of `wanted` it supports; returns what was registered.
    pub fn register_events(
        &self,
        d: Device,
        set: &EventSet,
        wanted: u64,
    ) -> Result<u64, NvmlError> {
        let mut supported: c_ulonglong = 0;
        // SAFETY: a handle from NVML and a valid out pointer.
        let code = unsafe { (self.entry.supported_events)(d.0, &mut supported) };
        self.check("nvmlDeviceGetSupportedEventTypes", code)?;
        let types = supported & wanted;
        if types != 0 {
            // SAFETY: a handle and a set from NVML.
            let code = unsafe { (self.entry.register_events)(d.0, types, set.0) };
            self.check("nvmlDeviceRegisterEvents", code)?;
        }
        Ok(types)
    }

    /// Waits up to `timeout_ms` for an event; `None` when none came.
    pub fn wait(&self, set: &EventSet, timeout_ms: u32) -> Result<Option<RawEvent>, NvmlError> {
        let mut data = EventData {
            device: std::ptr::null_mut(),
            event_type: 0,
            event_data: 0,
            gpu_instance_id: NO_INSTANCE,
            compute_instance_id: NO_INSTANCE,
        };
        // SAFETY: a set from NVML and a valid out pointer.
        let code = unsafe { (self.entry.event_wait)(set.0, &mut data, timeout_ms) };
        if code == ERROR_TIMEOUT {
            return Ok(None);
        }
        self.check("nvmlEventSetWait_v2", code)?;
        Ok(Some(RawEvent {
            device: Device(data.device),
            event_type: data.event_type,
            data: data.event_data,
            gpu_instance_id: data.gpu_instance_id,
            compute_instance_id: data.compute_instance_id,
        }))
    }
}

/// A NUL-terminated bus ID from a fixed array (unterminated: the whole array).
fn bus_id(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
