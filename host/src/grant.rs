//! What one guest is allowed: the capability set every layer checks against.
//!
//! Deny by default: [`Grant::none`] allows nothing, and an operator widens it per guest
//! (see `config::policy`). The host functions check reads, CDI writes and the kernel log
//! against it; the resource layer checks allocation answers (device nodes, mounts) and
//! resource names against it before the kubelet sees them.

use std::path::{Path, PathBuf};

/// One guest's capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Node paths (and everything below them) the guest may read.
    pub read_roots: Vec<PathBuf>,
    /// Device nodes the guest may hand out, as patterns: `*` matches within one path
    /// component, `**` across components (`/dev/nvidia*`, `/dev/infiniband/**`).
    pub device_patterns: Vec<String>,
    /// Host paths (and everything below them) the guest may mount into containers.
    pub mount_roots: Vec<PathBuf>,
    /// Prefixes the guest's resource names must start with (`nvidia.com/`).
    pub resource_prefixes: Vec<String>,
    /// CDI kinds (`vendor.com/class`) whose specs the guest may write.
    pub cdi_kinds: Vec<String>,
    /// Whether the guest may read the kernel log.
    pub kmsg: bool,
    /// sysfs attributes the guest may write, as patterns on the path it names
    /// (`/sys/bus/pci/devices/*/reset`).
    pub write_patterns: Vec<String>,
}

impl Grant {
    /// Nothing at all: the default for a guest without a policy.
    pub fn none() -> Self {
        Self::default()
    }

    /// True when `path` (a node path) lies under one of `roots`.
    pub fn under(roots: &[PathBuf], path: &Path) -> bool {
        roots.iter().any(|root| path.starts_with(root))
    }

    /// May the guest hand out the device node `path`?
    pub fn allows_device(&self, path: &str) -> bool {
        self.device_patterns.iter().any(|p| glob(p, path))
    }

    /// May the guest mount `path` from the host?
    pub fn allows_mount(&self, path: &str) -> bool {
        Self::under(&self.mount_roots, Path::new(path))
    }

    /// May the guest advertise `resource`?
    pub fn allows_resource(&self, resource: &str) -> bool {
        self.resource_prefixes
            .iter()
            .any(|p| resource.starts_with(p.as_str()))
    }

    /// May the guest write the sysfs attribute `path` (as the guest named it)?
    pub fn allows_write(&self, path: &str) -> bool {
        self.write_patterns.iter().any(|p| glob(p, path))
    }

    /// May the guest write CDI specs of `kind`?
    pub fn allows_cdi_kind(&self, kind: &str) -> bool {
        self.cdi_kinds.iter().any(|k| k == kind)
    }
}

/// Matches `text` against `pattern`, where `*` matches any run of characters except `/`
/// and `**` any run including `/`. Everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p {
            [] => t.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=t.len()).any(|i| go(rest, &t[i..])),
            [b'*', rest @ ..] => {
                let limit = t.iter().position(|&c| c == b'/').unwrap_or(t.len());
                (0..=limit).any(|i| go(rest, &t[i..]))
            }
            [c, rest @ ..] => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_stay_within_components_unless_doubled() {
        assert!(glob("/dev/nvidia*", "/dev/nvidia0"));
        assert!(glob("/dev/nvidia*", "/dev/nvidiactl"));
        assert!(!glob("/dev/nvidia*", "/dev/nvidia-caps/nvidia-cap1"));
        assert!(glob("/dev/nvidia-caps/*", "/dev/nvidia-caps/nvidia-cap1"));
        assert!(glob("/dev/infiniband/**", "/dev/infiniband/a/b"));
        assert!(!glob("/dev/nvidia*", "/dev/sda"));
        assert!(!glob("/dev/nvidia0", "/dev/nvidia01"));
        assert!(glob("/dev/widget/*", "/dev/widget/w1"));
        assert!(
            !glob("/dev/widget/*", "/dev/widget/../sda"),
            "'/' never matches '*'"
        );
    }

    #[test]
    fn none_allows_nothing() {
        let g = Grant::none();
        assert!(!g.allows_device("/dev/null"));
        assert!(!g.allows_mount("/"));
        assert!(!g.allows_resource("example.com/x"));
        assert!(!g.allows_cdi_kind("example.com/x"));
        assert!(!g.kmsg);
        assert!(!g.allows_write("/sys/bus/pci/devices/0000:18:00.0/reset"));
    }

    #[test]
    fn prefixes_mounts_and_kinds() {
        let g = Grant {
            mount_roots: vec!["/usr/lib/nvidia".into()],
            resource_prefixes: vec!["nvidia.com/".into()],
            cdi_kinds: vec!["nvidia.com/gpu".into()],
            ..Grant::none()
        };
        assert!(g.allows_mount("/usr/lib/nvidia/libcuda.so"));
        assert!(!g.allows_mount("/usr/lib/nvidia-other"));
        assert!(g.allows_resource("nvidia.com/gpu.shared"));
        assert!(!g.allows_resource("amd.com/gpu"));
        assert!(g.allows_cdi_kind("nvidia.com/gpu"));
        assert!(!g.allows_cdi_kind("nvidia.com/mig"));
    }
}
