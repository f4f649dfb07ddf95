//! NVML's reading of the node as the host hands it out, and what the guest makes of its
//! absence: no NVML on the node (`none`) or no grant (`denied`) fall back to sysfs and
//! procfs; a failed or stale reading (NVML stopped answering) keeps the last good one and
//! makes every GPU Unhealthy, as NVIDIA's plug-in does when NVML fails.

use wdp_guest_sdk::error::message;
use wdp_guest_sdk::host::nvml::{self, System};
use wdp_guest_sdk::log;
use wdp_guest_sdk::types::Error;

/// What is remembered between readings: the last good one, and what was logged.
#[derive(Default)]
pub struct NvmlReader {
    last: Option<System>,
    denied_logged: bool,
    failing: bool,
}

impl NvmlReader {
    /// Reads NVML through the host now: NVML's view (none: use sysfs) and, when it is an
    /// old one because the latest reading failed, why.
    pub fn read(&mut self) -> (Option<&System>, Option<String>) {
        let problem = match nvml::devices() {
            Ok(system) => {
                if self.failing {
                    log::info("NVML answers again");
                    self.failing = false;
                }
                self.last = system;
                None
            }
            Err(Error::Denied(m)) => {
                if !self.denied_logged {
                    log::info(&format!(
                        "NVML not granted ({m}); GPUs come from sysfs and procfs, without MIG \
                         devices, NVLink or NVML events (grant \"nvml\": true in the policy)"
                    ));
                    self.denied_logged = true;
                }
                None
            }
            Err(e) => {
                let m = message(e);
                if !self.failing {
                    log::warn(&format!(
                        "NVML reading failed ({m}); GPUs are Unhealthy until it answers again"
                    ));
                    self.failing = true;
                }
                self.last
                    .as_ref()
                    .map(|_| format!("NVML is not answering ({m})"))
            }
        };
        (self.last.as_ref(), problem)
    }
}
