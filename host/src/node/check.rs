//! `wasm-device-plugin check`: what the host would advertise on this node (or fixture),
//! without registering anything — every guest loaded, checked and enumerated once.

use std::path::PathBuf;

use super::guest_task::{accept_resources, load_guest};
use super::guests_dir;
use super::ownership::Claims;
use super::{NodeError, Skipped};
use crate::device::{Device, ResourceSpec};
use crate::handout::node_labels::{self, Checked};
use crate::node::HostConfig;
use crate::resource::service::MAX_DEVICES;
use crate::resource::snapshot::Snapshot;

/// One resource as the kubelet would be offered it.
#[derive(Debug)]
pub struct CheckedResource {
    pub guest: String,
    pub wasm: PathBuf,
    pub spec: ResourceSpec,
    /// The devices, or why enumeration failed.
    pub devices: Result<Vec<Device>, String>,
}

/// Everything `check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub resources: Vec<CheckedResource>,
    pub skipped: Vec<Skipped>,
    /// Which NVML library serves, or why none does.
    pub nvml: Result<String, String>,
    /// Whether a loaded guest is granted NVML (else the NVML line is noise).
    pub nvml_granted: bool,
    /// Per guest that publishes labels: those its policy lets through, and the refusals.
    pub labels: Vec<(String, Checked)>,
}

/// Loads every guest of `config.guests_dir` against `config.host_root` and enumerates its
/// resources once, applying the same checks as `run`.
pub async fn check(config: &HostConfig) -> Result<CheckReport, NodeError> {
    let runtime = super::runtime(config)?;
    let mut report = CheckReport {
        nvml: runtime
            .nvml
            .library()
            .ok_or_else(|| runtime.nvml.unavailable_reason().unwrap_or_default()),
        nvml_granted: false,
        resources: Vec::new(),
        skipped: Vec::new(),
        labels: Vec::new(),
    };
    let found = guests_dir::scan(&config.guests_dir)?;
    let claims = Claims::of(&found, &config.limits);
    for files in found {
        let guest = match load_guest(&runtime, &files, config, &claims).await {
            Ok((guest, notes)) => {
                report
                    .skipped
                    .extend(notes.into_iter().map(|reason| Skipped {
                        path: files.wasm.clone(),
                        reason,
                    }));
                guest
            }
            Err(reason) => {
                report.skipped.push(Skipped {
                    path: files.wasm.clone(),
                    reason,
                });
                continue;
            }
        };
        report.nvml_granted |= guest.grant().nvml;
        let accepted = accept_resources(&files, &guest, &claims, &mut report.skipped);
        for spec in accepted {
            let devices = match guest.list_devices(&spec.name).await {
                Ok(devices) => Snapshot::new(devices, MAX_DEVICES)
                    .map(|s| s.devices().to_vec())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            report.resources.push(CheckedResource {
                guest: files.name.clone(),
                wasm: files.wasm.clone(),
                spec,
                devices,
            });
        }
        // Every guest built with the SDK's `labels` feature exports the call; only those
        // with something to say are reported.
        if guest.publishes_labels() {
            let checked = match guest.labels().await {
                Ok(proposed) => node_labels::check(proposed, guest.grant()),
                Err(e) => Checked {
                    refused: vec![format!("labels could not be read: {e}")],
                    ..Checked::default()
                },
            };
            if !checked.accepted.is_empty() || !checked.refused.is_empty() {
                report.labels.push((files.name.clone(), checked));
            }
        }
    }
    Ok(report)
}
