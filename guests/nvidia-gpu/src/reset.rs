//! `PreStartContainer`: a function-level reset of each whole GPU before a container
//! starts, so that a new tenant never inherits the previous one's memory contents or a
//! wedged engine. Off by default; needs `reset.enabled` in the configuration and a
//! `write` grant for `/sys/bus/pci/devices/*/reset` in the policy.
//!
//! Shared GPUs (time-slicing replicas) and the GPUs of MIG devices are never reset:
//! other containers are using them.

use std::time::{Duration, Instant};

use crate::allocate;
use crate::config::Config;
use crate::enumerate::Gpu;
use crate::mig;
use crate::sharing;
use wdp_guest_sdk::error::{context, message};
use wdp_guest_sdk::host::{log, sysfs};
use wdp_guest_sdk::types::{Error, LogLevel};

/// Pause between looks at a GPU coming back from its reset.
const POLL: Duration = Duration::from_millis(20);
const NVIDIA_VENDOR: &str = "0x10de";

/// Resets the whole GPUs among `ids`. `gpus` includes GPUs offered before that no longer
/// enumerate (one that stopped answering must fail here, not be skipped).
pub fn pre_start(
    config: &Config,
    resource: &str,
    gpus: &[Gpu],
    ids: &[String],
) -> Result<(), Error> {
    let refs: Vec<&Gpu> = gpus.iter().collect();
    let units = mig::units(config, &refs)?;
    for unit in allocate::resolve(config, resource, &units, ids)? {
        let gpu = unit.gpu;
        if unit.mig.is_some() {
            // Resetting the GPU would end every other tenant's MIG device on it.
            log::log(
                LogLevel::Debug,
                &format!("{} is a MIG device; not resetting its GPU", unit.uuid()),
            );
        } else if sharing::placement(config, gpu).whole() {
            reset(gpu, config.reset.timeout_ms)?;
        } else {
            log::log(
                LogLevel::Debug,
                &format!("GPU {} is shared; not resetting it", gpu.address),
            );
        }
    }
    Ok(())
}

/// Writes `1` to the GPU's `reset` attribute, then waits (bounded) until its config
/// space answers again: a function that did not come back reads all ones (`0xffff`).
fn reset(gpu: &Gpu, timeout_ms: u32) -> Result<(), Error> {
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    let dir = format!("/sys/bus/pci/devices/{}", gpu.address);
    let what = format!("resetting GPU {} ({})", gpu.uuid, gpu.address);
    sysfs::write_file(&format!("{dir}/reset"), "1").map_err(|e| context(e, &what))?;
    let started = Instant::now();
    loop {
        let vendor = sysfs::read_file(&format!("{dir}/vendor"))
            .map(|v| v.trim().to_string())
            .map_err(message);
        if vendor.as_deref() == Ok(NVIDIA_VENDOR) {
            log::log(LogLevel::Info, &format!("GPU {} reset", gpu.address));
            return Ok(());
        }
        if started.elapsed() >= timeout {
            let seen = match vendor {
                Ok(v) => format!("its vendor ID reads {v}"),
                Err(e) => e,
            };
            return Err(Error::Other(format!(
                "{what}: the GPU did not answer within {timeout_ms} ms of the reset \
                 ({seen}); the container is not started on it"
            )));
        }
        std::thread::sleep(POLL);
    }
}
