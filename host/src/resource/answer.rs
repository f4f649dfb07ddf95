//! Checks on a guest's allocation before the kubelet sees it.
//!
//! The kubelet copies the answer into the container's spec and replays it on every
//! restart, so a bad answer is refused here with the reason rather than surfacing later
//! as a container that cannot start.

use std::path::{Component, Path};

use thiserror::Error;

use crate::device::ContainerAllocation;
use crate::grant::Grant;

/// What is wrong with a guest's allocation.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("env {0:?}: names must be non-empty and contain no '=' or NUL")]
    BadEnv(String),
    #[error("annotation {0:?}: keys must be non-empty")]
    BadAnnotation(String),
    #[error("{what} path {path:?} must be absolute, without '..' or NUL")]
    BadPath { what: &'static str, path: String },
    #[error("host path {0:?} does not exist on the node")]
    MissingHostPath(String),
    #[error("device node {0:?} is outside the guest's device grant")]
    DeviceNotGranted(String),
    #[error("mount of {0:?} is outside the guest's mount grant")]
    MountNotGranted(String),
    #[error("device {path:?} permissions {permissions:?} must be a non-empty subset of \"rwm\"")]
    BadPermissions { path: String, permissions: String },
    #[error("CDI device {0:?} is not a fully qualified name (vendor.com/class=name)")]
    BadCdiName(String),
}

/// Checks one container's allocation against the guest's `grant`. Host paths are looked
/// up under `host_root`.
pub fn check(
    allocation: &ContainerAllocation,
    host_root: &Path,
    grant: &Grant,
) -> Result<(), AnswerError> {
    for key in allocation.envs.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(AnswerError::BadEnv(key.clone()));
        }
    }
    for key in allocation.annotations.keys() {
        if key.is_empty() {
            return Err(AnswerError::BadAnnotation(key.clone()));
        }
    }
    for mount in &allocation.mounts {
        check_path("mount container", &mount.container_path)?;
        check_path("mount host", &mount.host_path)?;
        if !grant.allows_mount(&mount.host_path) {
            return Err(AnswerError::MountNotGranted(mount.host_path.clone()));
        }
        check_exists(&mount.host_path, host_root)?;
    }
    for device in &allocation.devices {
        check_path("device container", &device.container_path)?;
        check_path("device host", &device.host_path)?;
        if !is_permission_set(&device.permissions) {
            return Err(AnswerError::BadPermissions {
                path: device.container_path.clone(),
                permissions: device.permissions.clone(),
            });
        }
        if !grant.allows_device(&device.host_path) {
            return Err(AnswerError::DeviceNotGranted(device.host_path.clone()));
        }
        check_exists(&device.host_path, host_root)?;
    }
    for name in &allocation.cdi_devices {
        if !is_qualified_cdi_name(name) {
            return Err(AnswerError::BadCdiName(name.clone()));
        }
    }
    Ok(())
}

fn check_path(what: &'static str, path: &str) -> Result<(), AnswerError> {
    let p = Path::new(path);
    if !p.is_absolute() || path.contains('\0') || p.components().any(|c| c == Component::ParentDir)
    {
        return Err(AnswerError::BadPath {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn check_exists(node_path: &str, host_root: &Path) -> Result<(), AnswerError> {
    let relative = node_path.trim_start_matches('/');
    if host_root.join(relative).exists() {
        Ok(())
    } else {
        Err(AnswerError::MissingHostPath(node_path.to_owned()))
    }
}

fn is_permission_set(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 3
        && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        && p.chars().enumerate().all(|(i, c)| !p[..i].contains(c))
}

/// `vendor/class=name` as the CDI specification's parser accepts it.
pub fn is_qualified_cdi_name(name: &str) -> bool {
    let Some((kind, device)) = name.split_once('=') else {
        return false;
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let edge_alnum = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let vendor_ok = vendor
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && edge_alnum(vendor)
        && vendor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let class_ok = class
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && edge_alnum(class)
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    let device_ok = edge_alnum(device)
        && device
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    vendor_ok && class_ok && device_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceSpec, Mount};

    fn grant() -> Grant {
        Grant {
            device_patterns: vec!["/dev/nvidia*".into()],
            mount_roots: vec!["/dev".into(), "/usr/lib/x".into()],
            ..Grant::none()
        }
    }

    fn node() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        dir
    }

    fn with_device(host: &str, container: &str, permissions: &str) -> ContainerAllocation {
        ContainerAllocation {
            devices: vec![DeviceSpec {
                container_path: container.into(),
                host_path: host.into(),
                permissions: permissions.into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_well_formed_answer() {
        let dir = node();
        let mut a = with_device("/dev/nvidia0", "/dev/nvidia0", "rw");
        a.envs
            .insert("NVIDIA_VISIBLE_DEVICES".into(), "GPU-1".into());
        a.cdi_devices.push("nvidia.com/gpu=GPU-1".into());
        a.mounts.push(Mount {
            container_path: "/usr/lib/x".into(),
            host_path: "/dev".into(),
            read_only: true,
        });
        assert_eq!(check(&a, dir.path(), &grant()), Ok(()));
    }

    #[test]
    fn refuses_bad_paths_permissions_and_names() {
        let dir = node();
        let root = dir.path();
        assert!(matches!(
            check(&with_device("/dev/nvidia0", "dev/x", "rw"), root, &grant()),
            Err(AnswerError::BadPath { .. })
        ));
        assert!(matches!(
            check(
                &with_device("/dev/../etc/shadow", "/x", "rw"),
                root,
                &grant()
            ),
            Err(AnswerError::BadPath { .. })
        ));
        assert!(matches!(
            check(
                &with_device("/dev/nvidia9", "/dev/nvidia9", "rw"),
                root,
                &grant()
            ),
            Err(AnswerError::MissingHostPath(_))
        ));
        for bad in ["", "rwx", "rr", "rwmr"] {
            assert!(
                matches!(
                    check(
                        &with_device("/dev/nvidia0", "/dev/nvidia0", bad),
                        root,
                        &grant()
                    ),
                    Err(AnswerError::BadPermissions { .. })
                ),
                "{bad}"
            );
        }
        let outside = Grant {
            device_patterns: vec!["/dev/other*".into()],
            ..grant()
        };
        assert_eq!(
            check(
                &with_device("/dev/nvidia0", "/dev/nvidia0", "rw"),
                root,
                &outside
            ),
            Err(AnswerError::DeviceNotGranted("/dev/nvidia0".into()))
        );
        let mut mount = ContainerAllocation::default();
        mount.mounts.push(Mount {
            container_path: "/etc/x".into(),
            host_path: "/etc".into(),
            read_only: true,
        });
        assert_eq!(
            check(&mount, root, &grant()),
            Err(AnswerError::MountNotGranted("/etc".into()))
        );
        let mut env = ContainerAllocation::default();
        env.envs.insert("A=B".into(), "x".into());
        assert!(matches!(
            check(&env, root, &grant()),
            Err(AnswerError::BadEnv(_))
        ));
    }

    #[test]
    fn cdi_names_must_be_fully_qualified() {
        for ok in [
            "nvidia.com/gpu=0",
            "nvidia.com/gpu=GPU-12ab",
            "example.com/widget=a:b",
            "vendor/class=all",
        ] {
            assert!(is_qualified_cdi_name(ok), "{ok}");
        }
        for bad in [
            "gpu0",
            "nvidia.com/gpu",
            "nvidia.com=gpu",
            "/gpu=0",
            "nvidia.com/=0",
            "nvidia.com/gpu=",
            "nvidia.com/g.pu=0",
            "1vendor/gpu=0",
        ] {
            assert!(!is_qualified_cdi_name(bad), "{bad}");
        }
    }
}
