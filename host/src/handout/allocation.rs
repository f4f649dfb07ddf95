//! One container's `Allocate` answer, checked field by field against the guest's grant.

use super::{CdiLedger, NodeRoot, Refused, annotations, cdi_names, env, node_paths};
use crate::device::ContainerAllocation;
use crate::grant::Grant;

/// Checks every field of `allocation`: env names and values, annotation keys, mounts
/// (resolved host paths, container paths, writability), device nodes (resolved, of a
/// granted kind) and CDI names (granted kinds, defined by the guest's own specs).
pub fn check_allocation(
    allocation: &ContainerAllocation,
    root: &NodeRoot,
    grant: &Grant,
    ledger: &CdiLedger,
) -> Result<(), Refused> {
    for (key, value) in &allocation.envs {
        env::check(grant, key, value)?;
    }
    for (key, value) in &allocation.annotations {
        annotations::check(grant, key, value)?;
    }
    let mut seen = node_paths::Resolutions::default();
    for mount in &allocation.mounts {
        node_paths::check_mount(
            root,
            &mut seen,
            grant,
            &mount.host_path,
            &mount.container_path,
            !mount.read_only,
        )?;
    }
    for device in &allocation.devices {
        node_paths::check_device(
            root,
            &mut seen,
            grant,
            &device.host_path,
            &device.container_path,
            Some(&device.permissions),
        )?;
    }
    for name in &allocation.cdi_devices {
        cdi_names::check(grant, ledger, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceSpec, Mount};
    use crate::grant::{DeviceGrant, MountGrant, NodeKind};
    use crate::handout::DeviceNodes;

    fn grant() -> Grant {
        Grant {
            devices: vec![DeviceGrant {
                pattern: "/dev/nvidia*".into(),
                kind: NodeKind::Char,
            }],
            mounts: vec![MountGrant {
                host_root: "/dev/null".into(),
                container: "/var/run/nvidia-container-devices/*".into(),
                writable: false,
            }],
            env: vec!["NVIDIA_VISIBLE_DEVICES".into()],
            annotations: vec!["example.com/*".into()],
            cdi_kinds: vec!["nvidia.com/gpu".into()],
            ..Grant::none()
        }
    }

    fn node() -> (tempfile::TempDir, NodeRoot) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        std::fs::write(dir.path().join("dev/null"), "").unwrap();
        let root = NodeRoot::new(dir.path(), DeviceNodes::Simulated);
        (dir, root)
    }

    fn answer() -> ContainerAllocation {
        let mut a = ContainerAllocation {
            devices: vec![DeviceSpec {
                container_path: "/dev/nvidia0".into(),
                host_path: "/dev/nvidia0".into(),
                permissions: "rw".into(),
            }],
            mounts: vec![Mount {
                container_path: "/var/run/nvidia-container-devices/GPU-1".into(),
                host_path: "/dev/null".into(),
                read_only: true,
            }],
            cdi_devices: vec!["nvidia.com/gpu=GPU-1".into()],
            ..Default::default()
        };
        a.envs
            .insert("NVIDIA_VISIBLE_DEVICES".into(), "GPU-1".into());
        a.annotations
            .insert("example.com/allocated".into(), "GPU-1".into());
        a
    }

    #[test]
    fn a_granted_answer_passes_and_each_field_is_checked() {
        let (_dir, root) = node();
        let ledger = CdiLedger::default();
        ledger.record("nvidia.com/gpu", ["GPU-1".to_string()]);
        assert_eq!(
            check_allocation(&answer(), &root, &grant(), &ledger),
            Ok(())
        );

        let mut env = answer();
        env.envs.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        let mut annotation = answer();
        annotation
            .annotations
            .insert("cdi.k8s.io/x".into(), "nvidia.com/gpu=all".into());
        let mut mount = answer();
        mount.mounts[0].read_only = false;
        let mut device = answer();
        device.devices[0].permissions = "rwx".into();
        let mut cdi = answer();
        cdi.cdi_devices.push("nvidia.com/gpu=all".into());
        for (bad, field) in [
            (env, "env"),
            (annotation, "annotation"),
            (mount, "mount"),
            (device, "device"),
            (cdi, "CDI device"),
        ] {
            let err = check_allocation(&bad, &root, &grant(), &ledger).unwrap_err();
            assert!(err.to_string().starts_with(field), "{field}: {err}");
        }
    }
}
