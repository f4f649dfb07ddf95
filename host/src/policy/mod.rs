//! A guest's policy: the operator's file beside the guest (`<name>.policy.json`) that
//! says what the guest may touch and how much it may consume.
//!
//! Deny by default: a guest without a policy may read nothing, hand out nothing and
//! advertise nothing. The policy is the host's, never the guest's: the guest's own
//! configuration (`<name>.json`) goes to the guest and cannot widen its grant.

pub mod limits;

pub use limits::{CallDeadlines, GuestLimits};

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::grant::{DeviceGrant, Grant, MountGrant, NodeKind};
use crate::handout;

/// File name suffix of a guest's policy (`nvidia-gpu.policy.json`).
pub const POLICY_SUFFIX: &str = "policy.json";
/// Largest linear memory a policy may grant.
pub const MAX_MEMORY_MIB: u64 = 1024;
/// Longest wall-clock deadline a policy may set (the kubelet waits 30 s for pre-start).
pub const MAX_DEADLINE: Duration = Duration::from_secs(30);

/// Why a policy file was refused (the guest is then not loaded).
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{path}: cannot read the policy: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A parsed, checked policy.
#[derive(Debug, Clone, Default)]
pub struct GuestPolicy {
    pub grant: Grant,
    pub limits: GuestLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    read: Vec<String>,
    /// `"/dev/nvidia*"` (character devices) or `{"path": "/dev/nvme*", "type": "block"}`.
    #[serde(default)]
    devices: Vec<serde_json::Value>,
    /// `"/opt/x"` (read-only, below the same path in the container) or
    /// `{"hostPath": "/dev/null", "containerPath": "/var/run/x/*", "writable": false}`.
    #[serde(default)]
    mounts: Vec<serde_json::Value>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    annotations: Vec<String>,
    #[serde(default)]
    resource_prefixes: Vec<String>,
    #[serde(default)]
    cdi_kinds: Vec<String>,
    #[serde(default)]
    kmsg: bool,
    #[serde(default)]
    nvml: bool,
    #[serde(default)]
    label_prefixes: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    limits: LimitsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitsFile {
    #[serde(rename = "memoryMiB")]
    memory_mib: Option<u64>,
    #[serde(default)]
    deadlines_ms: BTreeMap<String, u64>,
}

impl GuestPolicy {
    /// The policy beside `wasm` (`<name>.policy.json`), or the deny-everything policy
    /// (with `defaults` as limits) when there is none.
    pub fn for_guest(
        wasm: &Path,
        defaults: &GuestLimits,
    ) -> Result<Option<GuestPolicy>, PolicyError> {
        let path = policy_path(wasm);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, defaults)
                .map(Some)
                .map_err(|reason| PolicyError::Invalid { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PolicyError::Read { path, source }),
        }
    }

    /// Parses and checks policy text; the error names the bad field.
    pub fn parse(text: &str, defaults: &GuestLimits) -> Result<GuestPolicy, String> {
        let file: PolicyFile =
            serde_json::from_str(text).map_err(|e| format!("invalid policy: {e}"))?;
        let read_roots = file
            .read
            .iter()
            .map(|p| node_path("read", p))
            .collect::<Result<Vec<_>, _>>()?;
        let devices = file
            .devices
            .iter()
            .map(device_grant)
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = file
            .mounts
            .iter()
            .map(mount_grant)
            .collect::<Result<Vec<_>, _>>()?;
        for pattern in &file.env {
            handout::env::check_pattern(pattern).map_err(|e| format!("env: {e}"))?;
        }
        for pattern in &file.annotations {
            handout::annotations::check_pattern(pattern)
                .map_err(|e| format!("annotations: {e}"))?;
        }
        for prefix in &file.resource_prefixes {
            if !prefix.contains('/') || prefix.starts_with('/') {
                return Err(format!(
                    "resourcePrefixes: {prefix:?} must look like vendor.com/"
                ));
            }
        }
        for kind in &file.cdi_kinds {
            if !handout::cdi_names::is_qualified(&format!("{kind}=x")) {
                return Err(format!(
                    "cdiKinds: {kind:?} must look like vendor.com/class"
                ));
            }
        }
        for prefix in &file.label_prefixes {
            handout::node_labels::check_prefix(prefix)
                .map_err(|e| format!("labelPrefixes: {e}"))?;
        }
        for pattern in &file.write {
            if !pattern.starts_with("/sys/") || pattern.split('/').any(|c| c == ".." || c == ".") {
                return Err(format!(
                    "write: {pattern:?} must be a pattern under /sys/ without '.' or '..'"
                ));
            }
        }
        let mut limits = defaults.clone();
        if let Some(mib) = file.limits.memory_mib {
            if mib == 0 || mib > MAX_MEMORY_MIB {
                return Err(format!(
                    "limits.memoryMiB: {mib} must be between 1 and {MAX_MEMORY_MIB}"
                ));
            }
            limits.memory_bytes = (mib << 20) as usize;
        }
        for (export, ms) in &file.limits.deadlines_ms {
            let d = Duration::from_millis(*ms);
            if d.is_zero() || d > MAX_DEADLINE {
                return Err(format!(
                    "limits.deadlinesMs.{export}: {ms} must be between 1 and 30000"
                ));
            }
            let slot = match export.as_str() {
                "configure" => &mut limits.deadlines.configure,
                "enumerate" => &mut limits.deadlines.enumerate,
                "allocate" => &mut limits.deadlines.allocate,
                "preferredAllocation" => &mut limits.deadlines.preferred_allocation,
                "preStart" => &mut limits.deadlines.pre_start,
                other => {
                    return Err(format!(
                        "limits.deadlinesMs: unknown export {other:?} (configure, enumerate, allocate, preferredAllocation, preStart)"
                    ));
                }
            };
            *slot = d;
        }
        Ok(GuestPolicy {
            grant: Grant {
                read_roots,
                devices,
                mounts,
                env: file.env,
                annotations: file.annotations,
                resource_prefixes: file.resource_prefixes,
                cdi_kinds: file.cdi_kinds,
                kmsg: file.kmsg,
                nvml: file.nvml,
                label_prefixes: file.label_prefixes,
                write_patterns: file.write,
            },
            limits,
        })
    }
}

/// `<dir>/<name>.policy.json` for `<dir>/<name>.wasm`.
pub fn policy_path(wasm: &Path) -> PathBuf {
    wasm.with_extension(POLICY_SUFFIX)
}

fn device_grant(entry: &serde_json::Value) -> Result<DeviceGrant, String> {
    use serde_json::Value;
    let (pattern, kind) = match entry {
        Value::String(path) => (path.as_str(), NodeKind::Char),
        Value::Object(fields) => {
            if let Some(key) = fields
                .keys()
                .find(|k| !matches!(k.as_str(), "path" | "type"))
            {
                return Err(format!("devices: unknown field {key:?} (path, type)"));
            }
            let path = fields
                .get("path")
                .and_then(Value::as_str)
                .ok_or("devices: an entry needs \"path\"")?;
            let kind = match fields.get("type").and_then(Value::as_str) {
                None | Some("char") => NodeKind::Char,
                Some("block") => NodeKind::Block,
                Some(other) => {
                    return Err(format!(
                        "devices: type {other:?} must be \"char\" or \"block\""
                    ));
                }
            };
            (path, kind)
        }
        other => {
            return Err(format!(
                "devices: {other} must be a path pattern or {{\"path\", \"type\"}}"
            ));
        }
    };
    if !pattern.starts_with("/dev/") || pattern.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "devices: {pattern:?} must be a pattern under /dev/ without '.' or '..'"
        ));
    }
    Ok(DeviceGrant {
        pattern: pattern.to_owned(),
        kind,
    })
}

fn mount_grant(entry: &serde_json::Value) -> Result<MountGrant, String> {
    use serde_json::Value;
    let (host, container, writable) = match entry {
        Value::String(host) => (host.as_str(), None, false),
        Value::Object(fields) => {
            if let Some(key) = fields
                .keys()
                .find(|k| !matches!(k.as_str(), "hostPath" | "containerPath" | "writable"))
            {
                return Err(format!(
                    "mounts: unknown field {key:?} (hostPath, containerPath, writable)"
                ));
            }
            let host = fields
                .get("hostPath")
                .and_then(Value::as_str)
                .ok_or("mounts: an entry needs \"hostPath\"")?;
            let container = match fields.get("containerPath") {
                None => None,
                Some(Value::String(c)) => Some(c.as_str()),
                Some(_) => return Err("mounts: containerPath must be a string".into()),
            };
            let writable = match fields.get("writable") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err("mounts: writable must be true or false".into()),
            };
            (host, container, writable)
        }
        other => {
            return Err(format!(
                "mounts: {other} must be a path or {{\"hostPath\", ...}}"
            ));
        }
    };
    let host_root = node_path("mounts", host)?;
    let container = match container {
        Some(pattern) => {
            handout::node_paths::check_container_pattern(pattern)
                .map_err(|e| format!("mounts: containerPath {pattern:?}: {e}"))?;
            pattern.to_owned()
        }
        None => format!("{}/**", host.trim_end_matches('/')),
    };
    Ok(MountGrant {
        host_root,
        container,
        writable,
    })
}

fn node_path(field: &str, p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if clean {
        Ok(path.to_owned())
    } else {
        Err(format!(
            "{field}: {p:?} must be an absolute path without '.' or '..'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_policy() {
        let text = r#"{
            "read": ["/sys", "/proc/driver/nvidia"],
            "devices": ["/dev/nvidia*"],
            "mounts": ["/usr/lib/nvidia"],
            "resourcePrefixes": ["nvidia.com/"],
            "cdiKinds": ["nvidia.com/gpu"],
            "kmsg": true,
            "limits": { "memoryMiB": 32, "deadlinesMs": { "allocate": 500 } }
        }"#;
        let p = GuestPolicy::parse(text, &GuestLimits::default()).unwrap();
        assert_eq!(
            p.grant.read_roots,
            vec![PathBuf::from("/sys"), PathBuf::from("/proc/driver/nvidia")]
        );
        assert!(p.grant.allows_device("/dev/nvidia3", NodeKind::Char) && p.grant.kmsg);
        assert_eq!(p.grant.mounts[0].container, "/usr/lib/nvidia/**");
        assert!(!p.grant.mounts[0].writable);
        assert_eq!(p.limits.memory_bytes, 32 << 20);
        assert_eq!(p.limits.deadlines.allocate, Duration::from_millis(500));
        assert_eq!(
            p.limits.deadlines.enumerate,
            GuestLimits::default().deadlines.enumerate
        );
    }

    #[test]
    fn parses_typed_devices_mapped_mounts_env_and_annotations() {
        let text = r#"{
            "devices": ["/dev/infiniband/*", {"path": "/dev/nvme*", "type": "block"}],
            "mounts": [{"hostPath": "/dev/null", "containerPath": "/var/run/nvidia-container-devices/*"},
                       {"hostPath": "/var/lib/x", "writable": true}],
            "env": ["NVIDIA_VISIBLE_DEVICES", "PCIDEVICE_*"],
            "annotations": ["example.com/*"]
        }"#;
        let g = GuestPolicy::parse(text, &GuestLimits::default())
            .unwrap()
            .grant;
        assert!(g.allows_device("/dev/nvme0n1", NodeKind::Block));
        assert!(!g.allows_device("/dev/nvme0n1", NodeKind::Char));
        assert!(g.allows_device("/dev/infiniband/uverbs0", NodeKind::Char));
        assert_eq!(g.mounts[0].container, "/var/run/nvidia-container-devices/*");
        assert_eq!(g.mounts[1].container, "/var/lib/x/**");
        assert!(g.mounts[1].writable && !g.mounts[0].writable);
        assert_eq!(g.env, ["NVIDIA_VISIBLE_DEVICES", "PCIDEVICE_*"]);
        assert_eq!(g.annotations, ["example.com/*"]);
    }

    #[test]
    fn an_empty_policy_grants_nothing() {
        let p = GuestPolicy::parse("{}", &GuestLimits::default()).unwrap();
        assert_eq!(p.grant, Grant::none());
    }

    #[test]
    fn errors_name_the_bad_field() {
        for (text, field) in [
            (r#"{"read": ["sys"]}"#, "read"),
            (r#"{"read": ["/sys/../etc"]}"#, "read"),
            (r#"{"devices": ["/etc/passwd"]}"#, "devices"),
            (r#"{"mounts": ["relative"]}"#, "mounts"),
            (r#"{"resourcePrefixes": ["nvidia"]}"#, "resourcePrefixes"),
            (r#"{"cdiKinds": ["gpu"]}"#, "cdiKinds"),
            (r#"{"limits": {"memoryMiB": 0}}"#, "memoryMiB"),
            (
                r#"{"limits": {"deadlinesMs": {"allocate": 60000}}}"#,
                "allocate",
            ),
            (r#"{"limits": {"deadlinesMs": {"bogus": 5}}}"#, "bogus"),
            (r#"{"write": ["/dev/sda"]}"#, "write"),
            (r#"{"write": ["/sys/../etc/x"]}"#, "write"),
            (r#"{"writes": true}"#, "writes"),
            (
                r#"{"devices": [{"path": "/dev/sd*", "type": "disk"}]}"#,
                "devices",
            ),
            (
                r#"{"mounts": [{"hostPath": "/opt", "containerPath": "/"}]}"#,
                "containerPath",
            ),
            (
                r#"{"mounts": [{"hostPath": "/opt", "readOnly": true}]}"#,
                "mounts",
            ),
            (r#"{"env": ["LD_*"]}"#, "env"),
            (r#"{"env": ["A=B"]}"#, "env"),
            (r#"{"annotations": ["cdi.k8s.io/*"]}"#, "annotations"),
            (
                r#"{"annotations": ["io.kubernetes.cri-o.Devices"]}"#,
                "annotations",
            ),
        ] {
            let err = GuestPolicy::parse(text, &GuestLimits::default()).unwrap_err();
            assert!(err.contains(field), "{text}: {err}");
        }
    }
}
