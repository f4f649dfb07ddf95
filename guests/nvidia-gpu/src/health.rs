//! GPU health, kept in the guest's memory between calls (the instance is long-lived; it
//! is rebuilt only after a trap, which forgets at most one quiet period).
//!
//! Signals: XID errors from the kernel log and, with NVML, NVML's XID and double-bit ECC
//! events (handed out once, so remembered here), rising fatal AER counters, a missing
//! device node, a PCIe link trained below its width, a GPU that was offered and is gone
//! (no longer on the bus, or no longer described by the driver), and NVML no longer
//! answering. Events keep a GPU (or, when NVML names its instance, one MIG device)
//! Unhealthy until a quiet period passes without a new one; conditions last as long as
//! they hold.

use std::time::{Duration, Instant};

use crate::config::HealthConfig;
use crate::enumerate::{Gpu, Scan};
use crate::order::sort_by_key;
use crate::xid;
use wdp_guest_sdk::attr;
use wdp_guest_sdk::error::message;
use wdp_guest_sdk::host::nvml::{self, Event, EventKind, MigDevice};
use wdp_guest_sdk::host::{devfs, kmsg, log, sysfs};
use wdp_guest_sdk::types::LogLevel;

/// One GPU with what is wrong with it now (healthy when nothing is).
#[derive(Clone, Debug)]
pub struct Assessed {
    pub gpu: Gpu,
    pub problems: Vec<String>,
    /// Recent events NVML tied to one GPU instance (and compute instance, when given).
    pub mig_problems: Vec<(u32, Option<u32>, Instant)>,
}

impl Assessed {
    /// Whether MIG device `m` of this GPU is healthy: the GPU is, and no recent event
    /// names its instance.
    pub fn mig_healthy(&self, m: &MigDevice) -> bool {
        self.problems.is_empty()
            && !self.mig_problems.iter().any(|(gi, ci, _)| {
                *gi == m.gpu_instance_id && ci.is_none_or(|c| c == m.compute_instance_id)
            })
    }
}

/// What is remembered about one GPU. (Plain lists, not maps: a node has a handful of
/// GPUs, and every map type instantiated costs the guest kilobytes.)
struct Record {
    gpu: Gpu,
    /// The last critical event for the whole GPU (what, and when it was read).
    event: Option<(String, Instant)>,
    /// Critical events NVML tied to one MIG instance: GI, CI, when.
    mig_events: Vec<(u32, Option<u32>, Instant)>,
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
    nvml_failing: bool,
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
                    event: None,
                    mig_events: Vec::new(),
                    aer: None,
                }),
            }
        }
        if config.xids {
            self.read_xids(config, now);
            if scan.nvml {
                self.read_nvml_events(config, now);
            }
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
            if let Some(why) = &scan.nvml_problem {
                problems.push(why.clone());
            }
            // Events older than the quiet period are forgotten: the GPU has recovered.
            match &r.event {
                Some((what, at)) if recent(*at) => problems.push(what.clone()),
                _ => r.event = None,
            }
            r.mig_events.retain(|(.., at)| recent(*at));
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
                mig_problems: r.mig_events.clone(),
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
                r.event = Some((format!("XID {} reported by the driver", event.xid), now));
            }
        }
    }

    /// Takes NVML's critical events since the last call (each is handed out once).
    fn read_nvml_events(&mut self, config: &HealthConfig, now: Instant) {
        match nvml::read_events() {
            Ok(events) => {
                self.nvml_failing = false;
                for e in &events {
                    if let Some(line) = self.note_event(config, e, now) {
                        log::log(LogLevel::Warn, &line);
                    }
                }
            }
            Err(e) => {
                if !self.nvml_failing {
                    log::log(
                        LogLevel::Warn,
                        &format!(
                            "cannot read NVML events ({}); the kernel log still reports XIDs",
                            message(e)
                        ),
                    );
                    self.nvml_failing = true;
                }
            }
        }
    }

    /// Remembers one NVML event for the GPU (or MIG instance) it names, when it is
    /// critical; returns the line to log. Double-bit ECC errors are always critical.
    fn note_event(&mut self, config: &HealthConfig, e: &Event, now: Instant) -> Option<String> {
        let what = match e.kind {
            EventKind::Xid => {
                let xid = u32::try_from(e.data).ok()?;
                if !config.is_critical(xid) {
                    return None;
                }
                format!("XID {xid} reported by the driver")
            }
            EventKind::DoubleBitEcc => "uncorrectable (double-bit) ECC error".to_string(),
        };
        let r = self
            .records
            .iter_mut()
            .find(|r| r.gpu.uuid.eq_ignore_ascii_case(&e.gpu_uuid))?;
        let place = match e.gpu_instance_id {
            Some(gi) => {
                let ci = e.compute_instance_id;
                r.mig_events.retain(|(g, c, _)| (*g, *c) != (gi, ci));
                r.mig_events.push((gi, ci, now));
                "in a MIG device"
            }
            None => {
                r.event = Some((what.clone(), now));
                "on the whole GPU"
            }
        };
        let gi = e.gpu_instance_id.unwrap_or_default();
        let ci = e.compute_instance_id.unwrap_or_default();
        Some(format!(
            "GPU {} (NVML): {what} {place} (GPU instance {gi}, compute instance {ci})",
            r.gpu.address
        ))
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
    use super::*;
    use crate::testdata::dgx;

    fn event(kind: EventKind, gpu: &str, gi: Option<u32>, data: u64) -> Event {
        Event {
            kind,
            gpu_uuid: gpu.into(),
            gpu_instance_id: gi,
            compute_instance_id: gi.map(|_| 0),
            data,
        }
    }

    /// A monitor that has seen the DGX (with MIG on GPUs 0 and 1).
    fn monitor() -> Monitor {
        let mut m = Monitor::default();
        for gpu in dgx(true) {
            m.records.push(Record {
                gpu,
                event: None,
                mig_events: Vec::new(),
                aer: None,
            });
        }
        m
    }

    #[test]
    fn nvml_events_mark_the_gpu_or_exactly_one_mig_device() {
        let config = HealthConfig::default();
        let now = Instant::now();
        let mut m = monitor();
        let ignored = event(EventKind::Xid, "GPU-3", None, 13);
        assert_eq!(m.note_event(&config, &ignored, now), None);
        let unknown = event(EventKind::Xid, "GPU-9", None, 79);
        assert_eq!(m.note_event(&config, &unknown, now), None);
        let line = m.note_event(&config, &event(EventKind::Xid, "GPU-3", None, 79), now);
        assert!(line.unwrap().contains("XID 79"));
        let ecc = event(EventKind::DoubleBitEcc, "GPU-1", Some(2), 1);
        let line = m.note_event(&config, &ecc, now).unwrap();
        assert!(
            line.contains("ECC") && line.contains("GPU instance 2,"),
            "{line}"
        );
        assert!(m.records[3].event.is_some());
        assert!(
            m.records[1].event.is_none(),
            "a MIG event leaves the GPU healthy"
        );
        assert_eq!(m.records[1].mig_events.len(), 1);
        let a = Assessed {
            gpu: m.records[1].gpu.clone(),
            problems: Vec::new(),
            mig_problems: vec![(2, Some(0), now)],
        };
        let migs = a.gpu.nvml.clone().unwrap().mig_devices;
        assert!(a.mig_healthy(&migs[0]) && !a.mig_healthy(&migs[1]));
        let whole = Assessed {
            problems: vec!["XID 79 reported by the driver".into()],
            mig_problems: Vec::new(),
            ..a
        };
        assert!(
            !whole.mig_healthy(&migs[0]),
            "a whole-GPU event marks its MIG devices"
        );
        let mut enabled = config.clone();
        enabled.enabled_xids = vec![13];
        assert!(m.note_event(&enabled, &ignored, now).is_some());
    }

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
