//! What one guest is allowed: the capability set every layer checks against.
//!
//! Deny by default: [`Grant::none`] allows nothing, and an operator widens it per guest
//! (see `crate::policy`). The host functions check reads, CDI writes and the kernel log
//! against it; the `handout` checks hold every allocation answer and CDI spec to it
//! (device nodes, mounts, env, annotations, CDI names) before a container runtime sees
//! them; the node holds resource names to it.

use std::path::{Path, PathBuf};

/// One guest's capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Node paths (and everything below them) the guest may read.
    pub read_roots: Vec<PathBuf>,
    /// Device nodes the guest may hand out.
    pub devices: Vec<DeviceGrant>,
    /// Host paths the guest may bind-mount into containers, and where.
    pub mounts: Vec<MountGrant>,
    /// Environment variable names the guest may set, as patterns (`PCIDEVICE_*`). Names
    /// that steer a container runtime or the dynamic linker match only an exact entry.
    pub env: Vec<String>,
    /// Annotation keys the guest may set, as patterns (`example.com/*`). Keys that a
    /// runtime interprets are never allowed.
    pub annotations: Vec<String>,
    /// Prefixes the guest's resource names must start with (`nvidia.com/gpu`).
    pub resource_prefixes: Vec<String>,
    /// CDI kinds (`vendor.com/class`) whose specs the guest may write.
    pub cdi_kinds: Vec<String>,
    /// Whether the guest may read the kernel log.
    pub kmsg: bool,
    /// Whether the guest may read the host's NVML readings and events.
    pub nvml: bool,
    /// Prefixes of the node labels the guest may publish (`nvidia.com/`,
    /// `example.com/gpu.`).
    pub label_prefixes: Vec<String>,
    /// sysfs attributes the guest may write, as patterns on the path it names
    /// (`/sys/bus/pci/devices/*/reset`).
    pub write_patterns: Vec<String>,
}

/// Which kind of device node a grant covers: a block device is a disk, so it is never
/// implied by a character-device grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NodeKind {
    #[default]
    Char,
    Block,
}

impl NodeKind {
    /// `c` or `b`, as OCI and CDI spell it.
    pub fn letter(self) -> &'static str {
        match self {
            NodeKind::Char => "c",
            NodeKind::Block => "b",
        }
    }
}

/// Device nodes a guest may hand out: a path pattern (`*` within a component, `**`
/// across) matched against the node path *after* links are resolved, and the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGrant {
    pub pattern: String,
    pub kind: NodeKind,
}

/// A bind mount a guest may hand out: a host path (and everything below it, matched
/// after links are resolved), the container paths it may appear at, and whether it may
/// be writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountGrant {
    pub host_root: PathBuf,
    /// Pattern for the container path (`/usr/lib/nvidia/**`).
    pub container: String,
    pub writable: bool,
}

impl Grant {
    /// Nothing at all: the default for a guest without a policy.
    pub fn none() -> Self {
        Self::default()
    }

    /// May the guest hand out the device node at `resolved` (a node path with no link
    /// left in it) of `kind`?
    pub fn allows_device(&self, resolved: &str, kind: NodeKind) -> bool {
        self.devices
            .iter()
            .any(|d| d.kind == kind && glob(&d.pattern, resolved))
    }

    /// The mount grants that cover the host path `resolved` (no link left in it).
    pub fn mounts_of<'a>(&'a self, resolved: &'a Path) -> impl Iterator<Item = &'a MountGrant> {
        self.mounts
            .iter()
            .filter(move |m| resolved.starts_with(&m.host_root))
    }

    /// May the guest advertise `resource`?
    pub fn allows_resource(&self, resource: &str) -> bool {
        self.resource_prefix(resource).is_some()
    }

    /// The longest of the guest's prefixes that `resource` starts with.
    pub fn resource_prefix(&self, resource: &str) -> Option<&str> {
        self.resource_prefixes
            .iter()
            .filter(|p| resource.starts_with(p.as_str()))
            .max_by_key(|p| p.len())
            .map(String::as_str)
    }

    /// May the guest write the sysfs attribute `path` (as the guest named it)?
    pub fn allows_write(&self, path: &str) -> bool {
        self.write_patterns.iter().any(|p| glob(p, path))
    }

    /// May the guest write CDI specs of `kind`?
    /// Whether a node label named `key` may be published.
    pub fn allows_label(&self, key: &str) -> bool {
        self.label_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

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

/// The part of `pattern` before its first wildcard: what an entry names literally.
pub fn literal_prefix(pattern: &str) -> &str {
    pattern.split('*').next().unwrap_or_default()
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
        assert_eq!(literal_prefix("PCIDEVICE_*"), "PCIDEVICE_");
        assert_eq!(literal_prefix("/a/**"), "/a/");
    }

    #[test]
    fn none_allows_nothing() {
        let g = Grant::none();
        assert!(!g.allows_device("/dev/null", NodeKind::Char));
        assert_eq!(g.mounts_of(Path::new("/")).count(), 0);
        assert!(!g.allows_resource("example.com/x"));
        assert!(!g.allows_cdi_kind("example.com/x"));
        assert!(!g.kmsg);
        assert!(!g.allows_write("/sys/bus/pci/devices/0000:18:00.0/reset"));
    }

    #[test]
    fn device_kinds_mounts_prefixes_and_cdi_kinds() {
        let g = Grant {
            devices: vec![DeviceGrant {
                pattern: "/dev/nvidia*".into(),
                kind: NodeKind::Char,
            }],
            mounts: vec![MountGrant {
                host_root: "/usr/lib/nvidia".into(),
                container: "/usr/lib/nvidia/**".into(),
                writable: false,
            }],
            resource_prefixes: vec!["nvidia.com/".into(), "nvidia.com/gpu".into()],
            cdi_kinds: vec!["nvidia.com/gpu".into()],
            ..Grant::none()
        };
        assert!(g.allows_device("/dev/nvidia0", NodeKind::Char));
        assert!(
            !g.allows_device("/dev/nvidia0", NodeKind::Block),
            "a char grant is no block grant"
        );
        assert_eq!(
            g.mounts_of(Path::new("/usr/lib/nvidia/libcuda.so")).count(),
            1
        );
        assert_eq!(g.mounts_of(Path::new("/usr/lib/nvidia-other")).count(), 0);
        assert_eq!(
            g.resource_prefix("nvidia.com/gpu.shared"),
            Some("nvidia.com/gpu")
        );
        assert_eq!(g.resource_prefix("nvidia.com/ib"), Some("nvidia.com/"));
        assert!(!g.allows_resource("amd.com/gpu"));
        assert!(g.allows_cdi_kind("nvidia.com/gpu"));
        assert!(!g.allows_cdi_kind("nvidia.com/mig"));
    }
}
