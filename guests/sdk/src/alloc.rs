//! Building one container's allocation: envs, mounts, device nodes, annotations and CDI
//! names, in the order added. The host checks every device node and mount against the
//! guest's policy, so add only what the container needs.

use crate::dev;
use crate::types::{ContainerAllocation, DeviceSpec, Mount};

/// An allocation with nothing in it, to fill field by field.
pub fn empty() -> ContainerAllocation {
    ContainerAllocation {
        envs: Vec::new(),
        mounts: Vec::new(),
        devices: Vec::new(),
        annotations: Vec::new(),
        cdi_devices: Vec::new(),
    }
}

/// The node at `path` on the host, at the same path in the container.
pub fn device(path: &str, permissions: &str) -> DeviceSpec {
    DeviceSpec {
        container_path: path.to_string(),
        host_path: path.to_string(),
        permissions: permissions.to_string(),
    }
}

/// A builder for one [`ContainerAllocation`].
#[derive(Debug)]
pub struct Allocation(ContainerAllocation);

impl Default for Allocation {
    fn default() -> Self {
        Allocation(empty())
    }
}

impl Allocation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an environment variable (a later value for the same name wins in the runtime).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.0.envs.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds the device node at `path` (same path inside), read-write.
    pub fn device(mut self, path: &str) -> Self {
        self.0.devices.push(device(path, "rw"));
        self
    }

    /// Adds each of `paths` that exists on the node now: optional nodes (a module that
    /// is not loaded) are left out instead of failing the container's start.
    pub fn devices_present<'p>(mut self, paths: impl IntoIterator<Item = &'p str>) -> Self {
        for path in paths {
            if dev::present(path) {
                self.0.devices.push(device(path, "rw"));
            }
        }
        self
    }

    /// Bind-mounts `host_path` at `container_path`.
    pub fn mount(mut self, container_path: &str, host_path: &str, read_only: bool) -> Self {
        self.0.mounts.push(Mount {
            container_path: container_path.to_string(),
            host_path: host_path.to_string(),
            read_only,
        });
        self
    }

    /// An annotation for the container runtime.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .annotations
            .push((key.to_string(), value.to_string()));
        self
    }

    /// A fully qualified CDI device name (see [`crate::cdi`]; write its spec first).
    pub fn cdi_device(mut self, name: &str) -> Self {
        self.0.cdi_devices.push(name.to_string());
        self
    }

    pub fn build(self) -> ContainerAllocation {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_in_order() {
        let a = Allocation::new()
            .env("A", "1")
            .device("/dev/widget/w0")
            .mount("/etc/w", "/opt/w", true)
            .annotation("k", "v")
            .cdi_device("example.com/widget=w0")
            .build();
        assert_eq!(a.envs, [("A".to_string(), "1".to_string())]);
        assert_eq!(a.devices[0].host_path, "/dev/widget/w0");
        assert_eq!(a.devices[0].container_path, "/dev/widget/w0");
        assert_eq!(a.devices[0].permissions, "rw");
        assert!(a.mounts[0].read_only);
        assert_eq!(a.annotations.len(), 1);
        assert_eq!(a.cdi_devices, ["example.com/widget=w0"]);
    }
}
