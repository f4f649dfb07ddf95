//! A test double of NVIDIA's management library (`libnvidia-ml.so.1`, NVML): the C ABI
//! the host calls, answered from text files beside the library instead of a GPU driver,
//! so host tests run on machines without GPUs.
//!
//! `testkit/build.rs` compiles this file alone (std only, no Cargo) into a `cdylib`;
//! `SimNode::enable_nvml` copies it into a simulated node's tree and writes the files it
//! reads. Each copy finds its files next to itself (`dladdr` on one of its own
//! functions), so two nodes in one test process load two copies that share nothing.
//!
//! # Files beside the library
//!
//! - `nvml-fixture`: the driver and GPUs. Read at `nvmlInit_v2` and again at every
//!   `nvmlDeviceGetCount_v2` (so a test can change the layout under a running host).
//!   Missing at `nvmlInit_v2`: `DRIVER_NOT_LOADED`, as on a node without the driver.
//! - `nvml-events`: critical events, one a line, appended by tests; each event set
//!   delivers each complete line once.
//! - `nvml-hang`: while it exists, every query of the driver or a device blocks (checked
//!   every 10 ms), like an NVML stuck on a wedged GPU. `nvmlEventSetWait_v2` keeps its
//!   timeout but delivers nothing meanwhile.
//!
//! # `nvml-fixture`
//!
//! One record a line, fields separated by single spaces; empty lines and lines starting
//! with `#` are ignored. Records refer to GPUs by NVML index, so `gpu` lines come first,
//! in index order (0, 1, …).
//!
//! ```text
//! driver <version>                    driver 580.159.04
//! cuda <version>                      cuda 13000   (1000 × major + 10 × minor)
//! init_error <code>                   nvmlInit_v2 returns <code> (optional)
//! gpu <index> <uuid> <minor> <busId> <pciDeviceId> <pciSubSystemId> <memory bytes> <cc> <mig> <nvlinks> <name…>
//! nvlink <gpu> <link> <remote busId> <remote pciDeviceId>
//! mig <gpu> <slot> <uuid> <gi> <ci> <gi slices> <ci slices> <memory MB> <SMs> <copy engines> <decoders> <encoders> <jpeg> <ofa> <profile>
//! ```
//!
//! - `busId` is NVML's form, `00000000:18:00.0` (hex; any widths are accepted);
//!   `pciDeviceId` is `0x<device><vendor>` (`0x233010de`), `pciSubSystemId` likewise.
//! - `cc` is the compute capability `major.minor`; `mig` is `unsupported`, `disabled` or
//!   `enabled`; `nvlinks` the number of NVLink ports (0: no NVLink); the name is the rest
//!   of the line and may hold spaces.
//! - `nvlink` lines are the active links; the GPU's other ports are inactive.
//! - `mig` slot is the index `nvmlDeviceGetMigDeviceHandleByIndex` takes (0..6).
//!
//! A malformed line makes `nvmlInit_v2` (or the re-reading `nvmlDeviceGetCount_v2`)
//! return `UNKNOWN` and say why on stderr.
//!
//! # `nvml-events`
//!
//! ```text
//! xid <gpu uuid> <xid> [<gi> <ci>]
//! double_bit_ecc <gpu uuid> [<gi> <ci>]
//! ```
//!
//! Without `<gi> <ci>` the event is for the whole GPU (ids `0xFFFFFFFF`). A set delivers
//! an event only for a GPU registered on it for that type; other lines are passed over.
//! A new set starts at the first line of the file, so an event a test appended before the
//! host registered is still delivered.
//!
//! # Where NVML leaves room
//!
//! - A MIG handle passed where a GPU is expected (MIG mode, minor, NVLink, events), or a
//!   GPU handle where a MIG device is (GI/CI ids): `INVALID_ARGUMENT`.
//! - `nvmlDeviceGetAttributes_v2` of a whole GPU: `NOT_SUPPORTED` (the fixture has no
//!   whole-GPU attributes). PCI info and compute capability of a MIG device: its GPU's.
//! - An NVLink port the GPU has but that is inactive: state 0, remote PCI info
//!   `NOT_SUPPORTED`; a port past the GPU's count (below 18): `NOT_SUPPORTED`.
//! - Memory is all free (the double runs nothing); `nvmlInit_v2` counts references like
//!   NVML, and the last `nvmlShutdown` frees the event sets.
//!
//! # Handles
//!
//! `nvmlDevice_t` values are plain numbers: GPU `i` is `0x1000 + i`, MIG slot `s` of GPU
//! `i` is `0x100000 + i × 0x100 + s`. A handle of a GPU or slot the current fixture does
//! not have is `INVALID_ARGUMENT`.

#![deny(unsafe_op_in_unsafe_fn)]
// The C names of NVML's types and functions.
#![allow(non_camel_case_types, non_snake_case)]
// Every exported function's contract is NVML's: pointers are null or valid for what the
// NVML documentation says the function writes or reads. Null is always answered with
// INVALID_ARGUMENT; the rest cannot be checked from here.
#![allow(clippy::missing_safety_doc)]

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, OsStr};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

type nvmlReturn_t = c_uint;
type nvmlDevice_t = *mut c_void;
type nvmlEventSet_t = *mut c_void;

const SUCCESS: nvmlReturn_t = 0;
const UNINITIALIZED: nvmlReturn_t = 1;
const INVALID_ARGUMENT: nvmlReturn_t = 2;
const NOT_SUPPORTED: nvmlReturn_t = 3;
const NOT_FOUND: nvmlReturn_t = 6;
const INSUFFICIENT_SIZE: nvmlReturn_t = 7;
const DRIVER_NOT_LOADED: nvmlReturn_t = 9;
const TIMEOUT: nvmlReturn_t = 10;
const UNKNOWN: nvmlReturn_t = 999;

/// `nvmlEventTypeDoubleBitEccError` and `nvmlEventTypeXidCriticalError`.
const EVENT_DOUBLE_BIT_ECC: u64 = 0x2;
const EVENT_XID: u64 = 0x8;
const SUPPORTED_EVENTS: u64 = EVENT_DOUBLE_BIT_ECC | EVENT_XID;
/// Instance ids of an event for the whole GPU.
const WHOLE_GPU: c_uint = 0xFFFF_FFFF;

/// `NVML_NVLINK_MAX_LINKS`.
const MAX_LINKS: c_uint = 18;
/// MIG devices a GPU can hold (`nvmlDeviceGetMaxMigDeviceCount`).
const MAX_MIG_DEVICES: c_uint = 7;

const GPU_HANDLE_BASE: usize = 0x1000;
const MIG_HANDLE_BASE: usize = 0x10_0000;
const EVENT_SET_BASE: usize = 0x5E70_0000;
/// At most this many GPUs, and MIG slots per GPU, fit the handle encoding.
const HANDLE_SPAN: usize = 0x100;

const HANG_POLL: Duration = Duration::from_millis(10);

#[repr(C)]
pub struct nvmlPciInfo_t {
    busIdLegacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pciDeviceId: c_uint,
    pciSubSystemId: c_uint,
    busId: [c_char; 32],
}

#[repr(C)]
pub struct nvmlMemory_t {
    total: u64,
    free: u64,
    used: u64,
}

#[repr(C)]
pub struct nvmlDeviceAttributes_t {
    multiprocessorCount: c_uint,
    sharedCopyEngineCount: c_uint,
    sharedDecoderCount: c_uint,
    sharedEncoderCount: c_uint,
    sharedJpegCount: c_uint,
    sharedOfaCount: c_uint,
    gpuInstanceSliceCount: c_uint,
    computeInstanceSliceCount: c_uint,
    memorySizeMB: u64,
}

#[repr(C)]
pub struct nvmlEventData_t {
    device: nvmlDevice_t,
    eventType: u64,
    eventData: u64,
    gpuInstanceId: c_uint,
    computeInstanceId: c_uint,
}

/// glibc's `Dl_info`.
#[repr(C)]
struct DlInfo {
    dli_fname: *const c_char,
    dli_fbase: *mut c_void,
    dli_sname: *const c_char,
    dli_saddr: *mut c_void,
}

extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
}

// ---------------------------------------------------------------------------------------
// The fixture

#[derive(Clone, Copy, PartialEq, Eq)]
enum MigMode {
    Unsupported,
    Disabled,
    Enabled,
}

/// A PCI address, as the fixture gives it in NVML's `busId` form.
#[derive(Clone, Copy)]
struct PciAddress {
    domain: u32,
    bus: u32,
    device: u32,
    function: u32,
}

struct Link {
    number: c_uint,
    remote: PciAddress,
    remote_device_id: u32,
}

struct Mig {
    slot: c_uint,
    uuid: String,
    gpu_instance: c_uint,
    compute_instance: c_uint,
    gpu_slices: c_uint,
    compute_slices: c_uint,
    memory_mb: u64,
    multiprocessors: c_uint,
    /// Copy engines, decoders, encoders, JPEG decoders, optical-flow accelerators.
    engines: [c_uint; 5],
    profile: String,
}

struct Gpu {
    uuid: String,
    minor: c_uint,
    pci: PciAddress,
    device_id: u32,
    subsystem_id: u32,
    memory: u64,
    compute_capability: (c_int, c_int),
    mig_mode: MigMode,
    nvlinks: c_uint,
    name: String,
    links: Vec<Link>,
    migs: Vec<Mig>,
}

struct Fixture {
    driver: String,
    cuda: c_int,
    init_error: Option<nvmlReturn_t>,
    gpus: Vec<Gpu>,
}

impl Fixture {
    const EMPTY: Fixture = Fixture {
        driver: String::new(),
        cuda: 0,
        init_error: None,
        gpus: Vec::new(),
    };

    fn parse(text: &str) -> Result<Fixture, String> {
        let mut fixture = Fixture::EMPTY;
        for (n, line) in (1..).zip(text.lines()) {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            fixture
                .parse_line(line)
                .map_err(|reason| format!("nvml-fixture line {n} `{line}`: {reason}"))?;
        }
        Ok(fixture)
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut fields = Fields(rest.split(' '));
        match kind {
            "driver" => self.driver = fields.text("version")?.to_string(),
            "cuda" => self.cuda = fields.number("version")?,
            "init_error" => self.init_error = Some(fields.number("code")?),
            "gpu" => {
                let index: usize = fields.number("index")?;
                if index != self.gpus.len() || index >= HANDLE_SPAN {
                    return Err(format!("GPU {index} out of order"));
                }
                let mut gpu = Gpu {
                    uuid: fields.text("uuid")?.to_string(),
                    minor: fields.number("minor")?,
                    pci: fields.pci("busId")?,
                    device_id: fields.hex("pciDeviceId")?,
                    subsystem_id: fields.hex("pciSubSystemId")?,
                    memory: fields.number("memory")?,
                    compute_capability: (0, 0),
                    mig_mode: MigMode::Unsupported,
                    nvlinks: 0,
                    name: String::new(),
                    links: Vec::new(),
                    migs: Vec::new(),
                };
                let cc = fields.text("compute capability")?;
                let (major, minor) = cc
                    .split_once('.')
                    .ok_or_else(|| format!("compute capability `{cc}` is not major.minor"))?;
                gpu.compute_capability = (number(major, "major")?, number(minor, "minor")?);
                gpu.mig_mode = match fields.text("MIG mode")? {
                    "unsupported" => MigMode::Unsupported,
                    "disabled" => MigMode::Disabled,
                    "enabled" => MigMode::Enabled,
                    other => return Err(format!("unknown MIG mode `{other}`")),
                };
                gpu.nvlinks = fields.number("nvlinks")?;
                if gpu.nvlinks > MAX_LINKS {
                    return Err(format!("more than {MAX_LINKS} NVLinks"));
                }
                gpu.name = fields.rest("name")?;
                self.gpus.push(gpu);
            }
            "nvlink" => {
                let gpu = self.gpu_mut(fields.number("GPU index")?)?;
                let link = Link {
                    number: fields.number("link")?,
                    remote: fields.pci("remote busId")?,
                    remote_device_id: fields.hex("remote pciDeviceId")?,
                };
                if link.number >= gpu.nvlinks {
                    return Err(format!("the GPU has {} NVLinks", gpu.nvlinks));
                }
                gpu.links.push(link);
            }
            "mig" => {
                let gpu = self.gpu_mut(fields.number("GPU index")?)?;
                let mig = Mig {
                    slot: fields.number("slot")?,
                    uuid: fields.text("uuid")?.to_string(),
                    gpu_instance: fields.number("GI id")?,
                    compute_instance: fields.number("CI id")?,
                    gpu_slices: fields.number("GI slices")?,
                    compute_slices: fields.number("CI slices")?,
                    memory_mb: fields.number("memory MB")?,
                    multiprocessors: fields.number("multiprocessors")?,
                    engines: [
                        fields.number("copy engines")?,
                        fields.number("decoders")?,
                        fields.number("encoders")?,
                        fields.number("JPEG decoders")?,
                        fields.number("OFA")?,
                    ],
                    profile: fields.text("profile")?.to_string(),
                };
                if mig.slot >= MAX_MIG_DEVICES {
                    return Err(format!("slot {} past {MAX_MIG_DEVICES}", mig.slot));
                }
                gpu.migs.push(mig);
            }
            other => return Err(format!("unknown record `{other}`")),
        }
        fields.end()
    }

    fn gpu_mut(&mut self, index: usize) -> Result<&mut Gpu, String> {
        self.gpus
            .get_mut(index)
            .ok_or_else(|| format!("no GPU {index} (gpu lines come first)"))
    }

    fn gpu_by_uuid(&self, uuid: &str) -> Option<usize> {
        self.gpus.iter().position(|g| g.uuid == uuid)
    }
}

/// The space-separated fields of a line after its record name.
struct Fields<'a>(std::str::Split<'a, char>);

impl<'a> Fields<'a> {
    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        self.0
            .next()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| format!("missing {what}"))
    }

    fn number<T: FromStr>(&mut self, what: &str) -> Result<T, String> {
        number(self.text(what)?, what)
    }

    fn hex(&mut self, what: &str) -> Result<u32, String> {
        let text = self.text(what)?;
        text.strip_prefix("0x")
            .and_then(|digits| u32::from_str_radix(digits, 16).ok())
            .ok_or_else(|| format!("{what} `{text}` is not 0x-prefixed hex"))
    }

    fn pci(&mut self, what: &str) -> Result<PciAddress, String> {
        let text = self.text(what)?;
        let parsed = (|| {
            let (domain, rest) = text.split_once(':')?;
            let (bus, rest) = rest.split_once(':')?;
            let (device, function) = rest.split_once('.')?;
            let hex = |s| u32::from_str_radix(s, 16).ok();
            Some(PciAddress {
                domain: hex(domain)?,
                bus: hex(bus)?,
                device: hex(device)?,
                function: hex(function)?,
            })
        })();
        parsed.ok_or_else(|| format!("{what} `{text}` is not domain:bus:device.function"))
    }

    /// The rest of the line, spaces included.
    fn rest(&mut self, what: &str) -> Result<String, String> {
        let words: Vec<&str> = self.0.by_ref().collect();
        if words.iter().all(|w| w.is_empty()) {
            return Err(format!("missing {what}"));
        }
        Ok(words.join(" "))
    }

    fn end(&mut self) -> Result<(), String> {
        match self.0.next() {
            None => Ok(()),
            Some(extra) => Err(format!("unexpected `{extra}`")),
        }
    }
}

fn number<T: FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} `{text}` is not a number in range"))
}

impl PciAddress {
    /// `nvmlPciInfo_t` for a function with this address.
    fn info(&self, device_id: u32, subsystem_id: u32) -> nvmlPciInfo_t {
        let (domain, bus, device, function) = (self.domain, self.bus, self.device, self.function);
        nvmlPciInfo_t {
            busIdLegacy: c_array(&format!("{domain:04X}:{bus:02X}:{device:02X}.{function:X}")),
            domain,
            bus,
            device,
            pciDeviceId: device_id,
            pciSubSystemId: subsystem_id,
            busId: c_array(&format!("{domain:08X}:{bus:02X}:{device:02X}.{function:X}")),
        }
    }
}

/// A NUL-terminated copy of `text` in a fixed C array, cut to fit.
fn c_array<const N: usize>(text: &str) -> [c_char; N] {
    let mut array = [0; N];
    for (slot, byte) in array.iter_mut().take(N.saturating_sub(1)).zip(text.bytes()) {
        *slot = byte as c_char;
    }
    array
}

// ---------------------------------------------------------------------------------------
// Events

struct Event {
    gpu_uuid: String,
    kind: u64,
    data: u64,
    /// GPU and compute instance, or none for the whole GPU.
    instance: Option<(c_uint, c_uint)>,
}

impl Event {
    fn parse(line: &str) -> Result<Event, String> {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut fields = Fields(rest.split(' '));
        let gpu_uuid = fields.text("GPU uuid")?.to_string();
        let (kind, data) = match kind {
            "xid" => (EVENT_XID, fields.number("XID")?),
            "double_bit_ecc" => (EVENT_DOUBLE_BIT_ECC, 0),
            other => return Err(format!("unknown event `{other}`")),
        };
        let instance = match fields.0.next() {
            None => None,
            Some(gi) => Some((number(gi, "GI id")?, fields.number("CI id")?)),
        };
        fields.end()?;
        Ok(Event {
            gpu_uuid,
            kind,
            data,
            instance,
        })
    }
}

#[derive(Default)]
struct EventSet {
    /// Complete lines of `nvml-events` this set has passed.
    consumed: usize,
    /// GPU index → event types registered.
    registered: BTreeMap<usize, u64>,
}

// ---------------------------------------------------------------------------------------
// State

struct State {
    /// `nvmlInit_v2` calls not yet matched by `nvmlShutdown`.
    inits: u32,
    fixture: Fixture,
    event_sets: EventSets,
    next_event_set: usize,
}

/// Event sets by key (the handle less `EVENT_SET_BASE`).
type EventSets = BTreeMap<usize, EventSet>;

static STATE: Mutex<State> = Mutex::new(State {
    inits: 0,
    fixture: Fixture::EMPTY,
    event_sets: BTreeMap::new(),
    next_event_set: 1,
});

/// The directory this copy of the library lives in, once found.
static DIR: OnceLock<PathBuf> = OnceLock::new();

fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Says why on stderr, never failing (a closed stderr must not abort the host).
fn complain(message: &str) {
    let _ = writeln!(io::stderr(), "nvml double: {message}");
}

/// The directory of this library's file, found through `dladdr` on one of its functions.
fn own_dir() -> Option<&'static Path> {
    if DIR.get().is_none() {
        let mut info = DlInfo {
            dli_fname: std::ptr::null(),
            dli_fbase: std::ptr::null_mut(),
            dli_sname: std::ptr::null(),
            dli_saddr: std::ptr::null_mut(),
        };
        let own = nvmlInit_v2 as unsafe extern "C" fn() -> nvmlReturn_t;
        // SAFETY: `own` is an address in this library and `info` a valid out-parameter.
        let found = unsafe { dladdr(own as *const c_void, &mut info) };
        if found == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dladdr returned a NUL-terminated path that lives as long as the mapping.
        let file = unsafe { CStr::from_ptr(info.dli_fname) };
        let dir = Path::new(OsStr::from_bytes(file.to_bytes())).parent()?;
        let _ = DIR.set(dir.to_path_buf());
    }
    DIR.get().map(PathBuf::as_path)
}

/// Reads `nvml-fixture`; `None` when there is none.
fn read_fixture() -> Result<Option<Fixture>, String> {
    let dir = own_dir().ok_or("cannot find the library's own file (dladdr)")?;
    let path = dir.join("nvml-fixture");
    match std::fs::read_to_string(&path) {
        Ok(text) => Fixture::parse(&text).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn hung() -> bool {
    DIR.get().is_some_and(|dir| dir.join("nvml-hang").exists())
}

/// Blocks while `nvml-hang` exists: what a driver query does on a wedged GPU.
fn wait_while_hung() {
    while hung() {
        std::thread::sleep(HANG_POLL);
    }
}

/// Runs a query of the driver once NVML is initialised (after waiting out a hang).
fn query(answer: impl FnOnce(&mut State) -> nvmlReturn_t) -> nvmlReturn_t {
    wait_while_hung();
    let mut state = lock();
    if state.inits == 0 {
        return UNINITIALIZED;
    }
    answer(&mut state)
}

/// What a device handle names in the current fixture.
enum Device<'a> {
    Gpu(usize, &'a Gpu),
    Mig(&'a Gpu, &'a Mig),
}

fn gpu_handle(index: usize) -> nvmlDevice_t {
    (GPU_HANDLE_BASE + index) as nvmlDevice_t
}

fn mig_handle(gpu: usize, slot: c_uint) -> nvmlDevice_t {
    (MIG_HANDLE_BASE + gpu * HANDLE_SPAN + slot as usize) as nvmlDevice_t
}

fn resolve(fixture: &Fixture, handle: nvmlDevice_t) -> Option<Device<'_>> {
    let value = handle as usize;
    if (GPU_HANDLE_BASE..GPU_HANDLE_BASE + HANDLE_SPAN).contains(&value) {
        let index = value - GPU_HANDLE_BASE;
        return fixture.gpus.get(index).map(|gpu| Device::Gpu(index, gpu));
    }
    let offset = value.checked_sub(MIG_HANDLE_BASE)?;
    let gpu = fixture.gpus.get(offset / HANDLE_SPAN)?;
    let slot = offset % HANDLE_SPAN;
    let mig = gpu.migs.iter().find(|m| m.slot as usize == slot)?;
    Some(Device::Mig(gpu, mig))
}

/// Runs a query of one device (after waiting out a hang); unknown handles are
/// `INVALID_ARGUMENT`. The answer may change the event sets (registering a device).
fn device_query(
    handle: nvmlDevice_t,
    answer: impl FnOnce(&mut EventSets, Device<'_>) -> nvmlReturn_t,
) -> nvmlReturn_t {
    query(|state| match resolve(&state.fixture, handle) {
        Some(device) => answer(&mut state.event_sets, device),
        None => INVALID_ARGUMENT,
    })
}

/// Stores `value` through a caller's out-pointer.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) -> nvmlReturn_t {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null, and valid by the caller's contract.
    unsafe { out.write(value) };
    SUCCESS
}

/// Copies `text` with its NUL into a caller's buffer of `length` bytes.
///
/// # Safety
/// `buffer` is null or valid for `length` bytes.
unsafe fn put_str(text: &str, buffer: *mut c_char, length: c_uint) -> nvmlReturn_t {
    if buffer.is_null() {
        return INVALID_ARGUMENT;
    }
    if text.len() >= length as usize {
        return INSUFFICIENT_SIZE;
    }
    // SAFETY: the buffer holds `length` > text.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buffer, text.len());
        buffer.add(text.len()).write(0);
    }
    SUCCESS
}

// ---------------------------------------------------------------------------------------
// Library and system

#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    let mut state = lock();
    match read_fixture() {
        Ok(None) => DRIVER_NOT_LOADED,
        Err(reason) => {
            complain(&reason);
            UNKNOWN
        }
        Ok(Some(fixture)) => match fixture.init_error {
            Some(code) if code != SUCCESS => code,
            _ => {
                state.fixture = fixture;
                state.inits = state.inits.saturating_add(1);
                SUCCESS
            }
        },
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    let mut state = lock();
    if state.inits == 0 {
        return UNINITIALIZED;
    }
    state.inits -= 1;
    if state.inits == 0 {
        state.event_sets.clear();
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    let text: &'static CStr = match result {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        NOT_FOUND => c"Not Found",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        DRIVER_NOT_LOADED => c"Driver Not Loaded",
        TIMEOUT => c"Timeout",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: the caller's buffer, as NVML's contract says.
    query(|state| unsafe { put_str(&state.fixture.driver, version, length) })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> nvmlReturn_t {
    // SAFETY: the caller's out-pointer.
    query(|state| unsafe { put(version, state.fixture.cuda) })
}

// ---------------------------------------------------------------------------------------
// Devices

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    query(|state| {
        match read_fixture() {
            Ok(Some(fixture)) => state.fixture = fixture,
            Ok(None) => {
                complain("nvml-fixture is gone");
                return UNKNOWN;
            }
            Err(reason) => {
                complain(&reason);
                return UNKNOWN;
            }
        }
        let n = state.fixture.gpus.len() as c_uint;
        // SAFETY: the caller's out-pointer.
        unsafe { put(count, n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    query(|state| {
        let index = index as usize;
        if index >= state.fixture.gpus.len() {
            return INVALID_ARGUMENT;
        }
        // SAFETY: the caller's out-pointer.
        unsafe { put(device, gpu_handle(index)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    device_query(device, |_, device| {
        let text = match device {
            Device::Gpu(_, gpu) => &gpu.uuid,
            Device::Mig(_, mig) => &mig.uuid,
        };
        // SAFETY: the caller's buffer.
        unsafe { put_str(text, uuid, length) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    device_query(device, |_, device| {
        let text = match device {
            Device::Gpu(_, gpu) => gpu.name.clone(),
            Device::Mig(gpu, mig) => format!("{} MIG {}", gpu.name, mig.profile),
        };
        // SAFETY: the caller's buffer.
        unsafe { put_str(&text, name, length) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: nvmlDevice_t,
    minor: *mut c_uint,
) -> nvmlReturn_t {
    device_query(device, |_, device| match device {
        // SAFETY: the caller's out-pointer.
        Device::Gpu(_, gpu) => unsafe { put(minor, gpu.minor) },
        Device::Mig(..) => INVALID_ARGUMENT,
    })
}

/// For a MIG device: its GPU's PCI function.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    device_query(device, |_, device| {
        let gpu = match device {
            Device::Gpu(_, gpu) | Device::Mig(gpu, _) => gpu,
        };
        // SAFETY: the caller's out-pointer.
        unsafe { put(pci, gpu.pci.info(gpu.device_id, gpu.subsystem_id)) }
    })
}

/// All memory free: the double runs no processes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    device_query(device, |_, device| {
        let total = match device {
            Device::Gpu(_, gpu) => gpu.memory,
            Device::Mig(_, mig) => mig.memory_mb.saturating_mul(1 << 20),
        };
        let info = nvmlMemory_t {
            total,
            free: total,
            used: 0,
        };
        // SAFETY: the caller's out-pointer.
        unsafe { put(memory, info) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    if major.is_null() || minor.is_null() {
        return INVALID_ARGUMENT;
    }
    device_query(device, |_, device| {
        let (ma, mi) = match device {
            Device::Gpu(_, gpu) | Device::Mig(gpu, _) => gpu.compute_capability,
        };
        // SAFETY: both checked non-null; the caller's out-pointers.
        unsafe {
            put(major, ma);
            put(minor, mi)
        }
    })
}

// ---------------------------------------------------------------------------------------
// MIG

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> nvmlReturn_t {
    if current.is_null() || pending.is_null() {
        return INVALID_ARGUMENT;
    }
    device_query(device, |_, device| {
        let mode = match device {
            Device::Gpu(_, gpu) => gpu.mig_mode,
            Device::Mig(..) => return INVALID_ARGUMENT,
        };
        let value = match mode {
            MigMode::Unsupported => return NOT_SUPPORTED,
            MigMode::Disabled => 0,
            MigMode::Enabled => 1,
        };
        // SAFETY: both checked non-null; the caller's out-pointers.
        unsafe {
            put(current, value);
            put(pending, value)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    device_query(device, |_, device| match device {
        Device::Gpu(_, gpu) if gpu.mig_mode == MigMode::Unsupported => NOT_SUPPORTED,
        // SAFETY: the caller's out-pointer.
        Device::Gpu(..) => unsafe { put(count, MAX_MIG_DEVICES) },
        Device::Mig(..) => INVALID_ARGUMENT,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig_device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    device_query(device, |_, device| {
        let Device::Gpu(gpu_index, gpu) = device else {
            return INVALID_ARGUMENT;
        };
        if gpu.mig_mode == MigMode::Unsupported {
            return NOT_SUPPORTED;
        }
        if index >= MAX_MIG_DEVICES {
            return INVALID_ARGUMENT;
        }
        if gpu.mig_mode != MigMode::Enabled || !gpu.migs.iter().any(|m| m.slot == index) {
            return NOT_FOUND;
        }
        // SAFETY: the caller's out-pointer.
        unsafe { put(mig_device, mig_handle(gpu_index, index)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    device_query(device, |_, device| match device {
        // SAFETY: the caller's out-pointer.
        Device::Mig(_, mig) => unsafe { put(id, mig.gpu_instance) },
        Device::Gpu(..) => INVALID_ARGUMENT,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    device_query(device, |_, device| match device {
        // SAFETY: the caller's out-pointer.
        Device::Mig(_, mig) => unsafe { put(id, mig.compute_instance) },
        Device::Gpu(..) => INVALID_ARGUMENT,
    })
}

/// MIG devices only: the double has no whole-GPU attributes (`NOT_SUPPORTED` for a GPU).
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetAttributes_v2(
    device: nvmlDevice_t,
    attributes: *mut nvmlDeviceAttributes_t,
) -> nvmlReturn_t {
    device_query(device, |_, device| {
        let Device::Mig(_, mig) = device else {
            return NOT_SUPPORTED;
        };
        let [copy, decoders, encoders, jpeg, ofa] = mig.engines;
        let value = nvmlDeviceAttributes_t {
            multiprocessorCount: mig.multiprocessors,
            sharedCopyEngineCount: copy,
            sharedDecoderCount: decoders,
            sharedEncoderCount: encoders,
            sharedJpegCount: jpeg,
            sharedOfaCount: ofa,
            gpuInstanceSliceCount: mig.gpu_slices,
            computeInstanceSliceCount: mig.compute_slices,
            memorySizeMB: mig.memory_mb,
        };
        // SAFETY: the caller's out-pointer.
        unsafe { put(attributes, value) }
    })
}

// ---------------------------------------------------------------------------------------
// NVLink

/// The GPU's link `link`: `Ok(None)` when the port exists but is inactive.
fn nvlink(device: Device<'_>, link: c_uint) -> Result<Option<&Link>, nvmlReturn_t> {
    let Device::Gpu(_, gpu) = device else {
        return Err(INVALID_ARGUMENT);
    };
    if link >= MAX_LINKS {
        return Err(INVALID_ARGUMENT);
    }
    if link >= gpu.nvlinks {
        return Err(NOT_SUPPORTED);
    }
    Ok(gpu.links.iter().find(|l| l.number == link))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: nvmlDevice_t,
    link: c_uint,
    is_active: *mut c_uint,
) -> nvmlReturn_t {
    device_query(device, |_, device| match nvlink(device, link) {
        // SAFETY: the caller's out-pointer.
        Ok(found) => unsafe { put(is_active, c_uint::from(found.is_some())) },
        Err(code) => code,
    })
}

/// An inactive link has no remote: `NOT_SUPPORTED`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemotePciInfo_v2(
    device: nvmlDevice_t,
    link: c_uint,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    device_query(device, |_, device| match nvlink(device, link) {
        Ok(Some(l)) => {
            let info = l.remote.info(l.remote_device_id, 0);
            // SAFETY: the caller's out-pointer.
            unsafe { put(pci, info) }
        }
        Ok(None) => NOT_SUPPORTED,
        Err(code) => code,
    })
}

// ---------------------------------------------------------------------------------------
// Events

fn event_set_key(set: nvmlEventSet_t) -> usize {
    (set as usize).wrapping_sub(EVENT_SET_BASE)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    if set.is_null() {
        return INVALID_ARGUMENT;
    }
    let mut state = lock();
    if state.inits == 0 {
        return UNINITIALIZED;
    }
    let key = state.next_event_set;
    state.next_event_set += 1;
    state.event_sets.insert(key, EventSet::default());
    // SAFETY: checked non-null; the caller's out-pointer.
    unsafe { put(set, (EVENT_SET_BASE + key) as nvmlEventSet_t) }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    let mut state = lock();
    if state.inits == 0 {
        return UNINITIALIZED;
    }
    match state.event_sets.remove(&event_set_key(set)) {
        Some(_) => SUCCESS,
        None => INVALID_ARGUMENT,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut u64,
) -> nvmlReturn_t {
    device_query(device, |_, device| match device {
        // SAFETY: the caller's out-pointer.
        Device::Gpu(..) => unsafe { put(types, SUPPORTED_EVENTS) },
        Device::Mig(..) => INVALID_ARGUMENT,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: u64,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    device_query(device, |event_sets, device| {
        let Device::Gpu(index, _) = device else {
            return INVALID_ARGUMENT;
        };
        if types & !SUPPORTED_EVENTS != 0 {
            return NOT_SUPPORTED;
        }
        let Some(set) = event_sets.get_mut(&event_set_key(set)) else {
            return INVALID_ARGUMENT;
        };
        *set.registered.entry(index).or_default() |= types;
        SUCCESS
    })
}

/// The next event of `nvml-events` for `set`, passing over lines it does not take.
/// `Err` when the set does not exist (any more).
fn next_event(state: &mut State, set: usize) -> Result<Option<nvmlEventData_t>, nvmlReturn_t> {
    let Some(dir) = DIR.get() else {
        return Err(UNKNOWN);
    };
    let State {
        fixture,
        event_sets,
        ..
    } = state;
    let set = event_sets.get_mut(&set).ok_or(INVALID_ARGUMENT)?;
    let text = match std::fs::read_to_string(dir.join("nvml-events")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            complain(&format!("nvml-events: {e}"));
            return Ok(None);
        }
    };
    // Only complete lines: a test may be half-way through appending one.
    let lines = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
    for line in lines.skip(set.consumed) {
        set.consumed += 1;
        let event = match Event::parse(line.trim_end_matches('\n')) {
            Ok(event) => event,
            Err(reason) => {
                complain(&format!("nvml-events line {}: {reason}", set.consumed));
                continue;
            }
        };
        let Some(index) = fixture.gpu_by_uuid(&event.gpu_uuid) else {
            complain(&format!("nvml-events: no GPU {}", event.gpu_uuid));
            continue;
        };
        if set
            .registered
            .get(&index)
            .is_some_and(|t| t & event.kind != 0)
        {
            let (gi, ci) = event.instance.unwrap_or((WHOLE_GPU, WHOLE_GPU));
            return Ok(Some(nvmlEventData_t {
                device: gpu_handle(index),
                eventType: event.kind,
                eventData: event.data,
                gpuInstanceId: gi,
                computeInstanceId: ci,
            }));
        }
    }
    Ok(None)
}

/// Polls `nvml-events` every 10 ms until an event for the set or `timeoutms` passes.
#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeoutms: c_uint,
) -> nvmlReturn_t {
    if data.is_null() {
        return INVALID_ARGUMENT;
    }
    let start = Instant::now();
    let timeout = Duration::from_millis(u64::from(timeoutms));
    loop {
        {
            let mut state = lock();
            if state.inits == 0 {
                return UNINITIALIZED;
            }
            if !hung() {
                match next_event(&mut state, event_set_key(set)) {
                    // SAFETY: checked non-null; the caller's out-pointer.
                    Ok(Some(event)) => return unsafe { put(data, event) },
                    Ok(None) => {}
                    Err(code) => return code,
                }
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return TIMEOUT;
        }
        std::thread::sleep(HANG_POLL.min(timeout - elapsed));
    }
}
