//! GPU health without NVML, kept in the guest's memory between calls (the instance is
//! long-lived; it is rebuilt only after a trap, which forgets at most one quiet period).
//!
//! Signals: XID errors from the kernel log, rising fatal AER counters, a missing device
//! node, a PCIe link trained below its width, and a GPU that was offered and is gone
//! (no longer on the bus, or no longer described by the driver). Events (XIDs, AER)
//! keep a GPU Unhealthy until a quiet period passes without a new one; conditions
//! (node, link, gone) last as long as they hold.

use std::time::{Duration, Instant};

use crate::config::HealthConfig;
use crate::enumerate::{Gpu, Scan};
use crate::order::sort_by_key;
use crate::xid;
use wdp_guest_sdk::attr;
use wdp_guest_sdk::error::message;
use wdp_guest_sdk::host::{devfs, kmsg, log, sysfs};
use wdp_guest_sdk::types::LogLevel;

/// One GPU with what is wrong with it now (healthy when nothing is).
#[derive(Clone, Debug)]
pub struct Assessed {
    pub gpu: Gpu,
    pub problems: Vec<String>,
}

/// What is remembered about one GPU. (Plain lists, not maps: a node has a handful of
/// GPUs, and every map type instantiated costs the guest kilobytes.)
struct Record {
    gpu: Gpu,
    /// The last critical XID and when it was read.
    xid: Option<(u32, Instant)>,
    /// The last fatal AER total (the first reading is the baseline) and when it rose.
    aer: Option<(u64, Option<Instant>)>,
}

/// What the guest remembers between scans.
#[derive(Default)]
pub struct Monitor {
    /// Every GPU offered so far and not withdrawn on purpose: one that disappears stays
    /// listed (Unhealthy) so that capacity shows the loss.
    records: Vec<Record>,
    /// The last state logged per address, so that only changes are logged.
    logged: Vec<(String, String)>,
    kmsg_failing: bool,
}

impl Monitor {
    /// Assesses the GPUs of `scan` (plus those offered before and now gone), in minor order.
    pub fn assess(&mut self, config: &HealthConfig, scan: Scan) -> Vec<Assessed> {
        let now = Instant::now();
        let quiet = config.recovery_quiet_seconds.map(Duration::from_secs);
        let recent = |at: Instant| quiet.is_none_or(|q| now.duration_since(at) < q);
        for (address, why) in &scan.withheld {
            self.records.retain(|r| r.gpu.address != *address);
            self.log_change(address, format!("not offered: {why}"), LogLevel::Info);
        }
        for gpu in &scan.gpus {
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
        if config.xids {
            self.read_xids(config, now);
        }
        let mut assessed = Vec::with_capacity(self.records.len());
        for r in &mut self.records {
            let gpu = &r.gpu;
            let mut problems = Vec::new();
            if scan.gpus.iter().any(|g| g.address == gpu.address) {
                device_node(gpu, &mut problems);
                if config.pcie_link {
                    pcie_link(gpu, &mut problems);
                }
                if config.aer {
                    aer_fatal(r, now, &mut problems);
                }
            } else {
                problems.push("gone: no longer on the PCI bus or described by the driver".into());
            }
            // Events older than the quiet period are forgotten: the GPU has recovered.
            match r.xid {
                Some((xid, at)) if recent(at) => {
                    problems.push(format!("XID {xid} reported by the driver"));
                }
                _ => r.xid = None,
            }
            if let Some((count, rose)) = &mut r.aer {
                match rose {
                    Some(at) if recent(*at) => {
                        problems.push(format!("{count} fatal PCIe AER errors"));
                    }
                    _ => *rose = None,
                }
            }
            assessed.push(Assessed {
                gpu: r.gpu.clone(),
                problems,
            });
        }
        for a in &assessed {
            let (state, level) = if a.problems.is_empty() {
                ("healthy".to_string(), LogLevel::Info)
            } else {
                (
                    format!("unhealthy: {}", a.problems.join("; ")),
                    LogLevel::Warn,
                )
            };
            let described = format!("({}, {}) {state}", a.gpu.uuid, a.gpu.model);
            self.log_change(&a.gpu.address, described, level);
        }
        sort_by_key(&mut assessed, |a| a.gpu.minor);
        assessed
    }

    /// Adds the GPUs offered before that are missing from `gpus`.
    pub fn add_remembered(&self, gpus: &mut Vec<Gpu>) {
        for r in &self.records {
            if !gpus.iter().any(|g| g.address == r.gpu.address) {
                gpus.push(r.gpu.clone());
            }
        }
    }

    /// Takes the XID lines logged since the last call; critical ones are remembered for
    /// the GPU they name. Without the grant the check is skipped (logged once).
    fn read_xids(&mut self, config: &HealthConfig, now: Instant) {
        let lines = match kmsg::read_new(xid::FILTER) {
            Ok(lines) => {
                self.kmsg_failing = false;
                lines
            }
            Err(e) => {
                if !self.kmsg_failing {
                    log::log(
                        LogLevel::Warn,
                        &format!(
                            "cannot read XIDs from the kernel log ({}); XID health checks \
                             are off until it works (grant \"kmsg\": true in the policy)",
                            message(e)
                        ),
                    );
                    self.kmsg_failing = true;
                }
                return;
            }
        };
        for line in &lines {
            let Some(event) = xid::parse(line) else {
                continue;
            };
            if !config.is_critical(event.xid) {
                continue;
            }
            if let Some(r) = self
                .records
                .iter_mut()
                .find(|r| event.is_for(&r.gpu.address))
            {
                log::log(LogLevel::Warn, &format!("GPU {}: {line}", r.gpu.address));
                r.xid = Some((event.xid, now));
            }
        }
    }

    /// Logs `state` for `address` unless it is what was logged last.
    fn log_change(&mut self, address: &str, state: String, level: LogLevel) {
        match self.logged.iter_mut().find(|(a, _)| a == address) {
            Some((_, last)) if *last == state => return,
            Some((_, last)) => *last = state.clone(),
            None => self.logged.push((address.to_string(), state.clone())),
        }
        log::log(level, &format!("GPU {address} {state}"));
    }
}

/// Notes a rise of the GPU's fatal AER total. The first reading is the baseline:
/// errors counted before this guest started have already been dealt with.
fn aer_fatal(r: &mut Record, now: Instant, problems: &mut Vec<String>) {
    let path = format!("/sys/bus/pci/devices/{}/aer_dev_fatal", r.gpu.address);
    // No file: the kernel or platform does not report AER for this function.
    let Ok(text) = sysfs::read_file(&path) else {
        return;
    };
    let Some(total) = aer_total(&text) else {
        problems.push(format!("{path} is unreadable"));
        return;
    };
    match &mut r.aer {
        Some((last, rose)) => {
            if total > *last {
                *rose = Some(now);
            }
            *last = total;
        }
        None => r.aer = Some((total, None)),
    }
}

/// `TOTAL_ERR_FATAL <n>` from an `aer_dev_fatal` file.
pub fn aer_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("TOTAL_ERR_FATAL "))
        .and_then(|n| n.trim().parse().ok())
}

fn device_node(gpu: &Gpu, problems: &mut Vec<String>) {
    let path = gpu.dev_path();
    match devfs::lookup(&path) {
        Ok(Some(_)) => {}
        Ok(None) => problems.push(format!("device node {path} is missing")),
        Err(e) => problems.push(format!("cannot look up {path}: {}", message(e))),
    }
}

/// Width only: GPUs lower their link *speed* when idle to save power, so a slow link
/// is normal, while a narrow one means lanes failed to train.
fn pcie_link(gpu: &Gpu, problems: &mut Vec<String>) {
    let read = |name: &str| -> Option<u32> {
        attr::read_number(&format!("/sys/bus/pci/devices/{}/{name}", gpu.address))
    };
    if let (Some(current), Some(max)) = (read("current_link_width"), read("max_link_width"))
        && current < max
    {
        problems.push(format!("PCIe link degraded to x{current} of x{max}"));
    }
}

#[cfg(test)]
mod tests {
    use super::aer_total;

    #[test]
    fn reads_the_fatal_total() {
        let text = "Undefined 0\nDLP 1\nSDES 0\nTLP 0\nFCP 0\nCmpltTO 0\nCmpltAbrt 0\n\
                    UnxCmplt 0\nRxOF 0\nMalfTLP 2\nECRC 0\nUnsupReq 0\nACSViol 0\n\
                    UncorrIntErr 0\nBlockedTLP 0\nAtomicOpBlocked 0\nTLPBlockedErr 0\n\
                    PoisonTLPBlocked 0\nTOTAL_ERR_FATAL 3\n";
        assert_eq!(aer_total(text), Some(3));
        assert_eq!(aer_total("DLP 1\n"), None);
        assert_eq!(aer_total("TOTAL_ERR_FATAL x\n"), None);
    }
}
