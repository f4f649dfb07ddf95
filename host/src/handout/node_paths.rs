//! Host paths handed to a runtime (device nodes and bind mounts), judged where they
//! really lead, and the container paths they may appear at.
//!
//! runc opens a device spec's host path and a mount's source following every link, on
//! the node's real root. So the path is resolved here the same way (under the host root,
//! links followed as the kernel does, see [`Resolver`]) and the *resolved* path is held
//! to the grant: `/dev/infiniband/uverbs9 -> ../nvidia0` is the GPU, not an HCA.

use std::path::{Component, Path};

use super::{DeviceNodes, NodeRoot, Refused};
use crate::grant::{Grant, MountGrant, NodeKind, glob, literal_prefix};
use crate::guest_text;
use crate::host_root::node_file::FileKind as Found;
use crate::host_root::resolver::ResolveError;

/// Longest path (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Container paths no mount may cover: the root and the kernel interfaces the runtime
/// sets up and masks.
pub const NEVER_MOUNTED_OVER: &[&str] = &["/", "/dev", "/proc", "/sys"];
/// Container paths a runtime hook reads to decide what to give the container (the NVIDIA
/// toolkit's volume-mounts list): only a mount grant whose container path names them
/// literally allows a mount there, never a wildcard from above.
pub const RUNTIME_CONTROL_PATHS: &[&str] = &[
    "/var/run/nvidia-container-devices",
    "/run/nvidia-container-devices",
];

/// What a host path leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// The resolved node path (no link left in it).
    pub node: String,
    pub kind: FileKind,
}

/// The kind of file at a resolved path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Device {
        kind: NodeKind,
        /// `None` for a simulated node, whose numbers are unknown.
        numbers: Option<(u32, u32)>,
    },
    Regular,
    Directory,
    Other,
}

/// Absolute, without `.`, `..` or NUL, at most [`MAX_PATH_BYTES`].
pub fn check_syntax(path: &str) -> Result<(), &'static str> {
    let p = Path::new(path);
    let clean = p.is_absolute()
        && !path.contains('\0')
        && path.len() <= MAX_PATH_BYTES
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.split('/').any(|c| c == "." || c == "..");
    if clean {
        Ok(())
    } else {
        Err("paths must be absolute, without '.', '..' or NUL, and at most 4096 bytes")
    }
}

/// Checks a policy's container-path pattern for mounts.
pub fn check_container_pattern(pattern: &str) -> Result<(), String> {
    check_syntax(pattern).map_err(str::to_owned)?;
    let literal = literal_prefix(pattern).trim_end_matches('/');
    if literal.is_empty() || NEVER_MOUNTED_OVER.contains(&literal) {
        return Err("must name a directory below /, /dev, /proc or /sys".into());
    }
    if literal.starts_with("/proc/") || literal.starts_with("/sys/") {
        return Err("no mount may cover the container's /proc or /sys".into());
    }
    Ok(())
}

/// Why a host path could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// Nothing there. Said as such only where the guest was granted the path anyway,
    /// so that answers cannot probe what exists elsewhere on the node.
    NotFound,
    Other(String),
}

/// Paths already resolved during one check: an answer names the same node many times
/// (`/dev/null` once per GPU, control nodes once per container).
#[derive(Debug, Default)]
pub struct Resolutions(Vec<(String, Result<NodeFile, Unresolved>)>);

impl Resolutions {
    /// [`resolve`], once per path.
    pub fn get(&mut self, root: &NodeRoot, path: &str) -> Result<NodeFile, Unresolved> {
        if let Some((_, known)) = self.0.iter().find(|(p, _)| p == path) {
            return known.clone();
        }
        let found = resolve(root, path);
        self.0.push((path.to_owned(), found.clone()));
        found
    }
}

/// Resolves `path` under the host root, following every link, and says what it is.
pub fn resolve(root: &NodeRoot, path: &str) -> Result<NodeFile, Unresolved> {
    let resolver = root.resolver();
    // Opened O_PATH in one step with its resolution, then looked at through the fd:
    // what is judged is what the path led to, and no driver sees an `open`.
    let opened = resolver.open(path).map_err(|e| match e {
        ResolveError::NotFound { .. } => Unresolved::NotFound,
        ResolveError::Loop { .. } => Unresolved::Other("too many levels of symbolic links".into()),
        other => Unresolved::Other(guest_text::clean(&other.to_string())),
    })?;
    let stat = opened
        .stat()
        .map_err(|e| Unresolved::Other(format!("cannot stat it on the node: {}", e.reason())))?;
    let numbers = Some((
        rustix::fs::major(stat.st_rdev),
        rustix::fs::minor(stat.st_rdev),
    ));
    let kind = match Found::of(&stat) {
        Found::CharDevice => FileKind::Device {
            kind: NodeKind::Char,
            numbers,
        },
        Found::BlockDevice => FileKind::Device {
            kind: NodeKind::Block,
            numbers,
        },
        Found::Regular if root.device_nodes == DeviceNodes::Simulated => FileKind::Device {
            kind: NodeKind::Char,
            numbers: None,
        },
        Found::Regular => FileKind::Regular,
        Found::Directory => FileKind::Directory,
        _ => FileKind::Other,
    };
    Ok(NodeFile {
        node: opened.node().display().to_string(),
        kind,
    })
}

/// A device node for a container: the container path under `/dev/`, the host path a
/// device node of a granted kind once resolved, permissions within `rwm`. Returns what
/// the host path leads to.
pub fn check_device(
    root: &NodeRoot,
    seen: &mut Resolutions,
    grant: &Grant,
    host_path: &str,
    container_path: &str,
    permissions: Option<&str>,
) -> Result<NodeFile, Refused> {
    check_syntax(container_path).map_err(|r| Refused::device(container_path, r))?;
    if !container_path.starts_with("/dev/") {
        return Err(Refused::device(
            container_path,
            "device nodes go under /dev/ in the container",
        ));
    }
    check_syntax(host_path).map_err(|r| Refused::device(host_path, r))?;
    if let Some(p) = permissions
        && !is_permission_set(p)
    {
        return Err(Refused::device(
            host_path,
            format!(
                "permissions {} must be a non-empty subset of \"rwm\"",
                guest_text::quote(p)
            ),
        ));
    }
    let file = seen.get(root, host_path).map_err(|e| {
        let granted = grant.devices.iter().any(|d| glob(&d.pattern, host_path));
        Refused::device(host_path, unresolved(e, granted, "device"))
    })?;
    let FileKind::Device { kind, .. } = file.kind else {
        return Err(Refused::device(
            host_path,
            format!("{} is not a character or block device node", file.node),
        ));
    };
    if !grant.allows_device(&file.node, kind) {
        let what = match kind {
            NodeKind::Char => "character",
            NodeKind::Block => "block",
        };
        return Err(Refused::device(
            host_path,
            format!(
                "resolves to the {what} device {}, outside the guest's device grant",
                file.node
            ),
        ));
    }
    Ok(file)
}

/// A bind mount: the host path, resolved, under a mount grant; the container path one
/// that grant allows (never over `/`, `/proc`, `/sys`, `/dev`, and over a runtime's
/// control paths only where the grant names them); writable only where granted.
/// Returns the resolved host path.
pub fn check_mount(
    root: &NodeRoot,
    seen: &mut Resolutions,
    grant: &Grant,
    host_path: &str,
    container_path: &str,
    writable: bool,
) -> Result<String, Refused> {
    check_syntax(container_path).map_err(|r| Refused::mount(container_path, r))?;
    check_syntax(host_path).map_err(|r| Refused::mount(host_path, r))?;
    if NEVER_MOUNTED_OVER.contains(&container_path)
        || container_path.starts_with("/proc/")
        || container_path.starts_with("/sys/")
    {
        return Err(Refused::mount(
            container_path,
            "no mount may cover the container's /, /dev, /proc or /sys",
        ));
    }
    let file = seen.get(root, host_path).map_err(|e| {
        let granted = grant.mounts_of(Path::new(host_path)).next().is_some();
        Refused::mount(host_path, unresolved(e, granted, "mount"))
    })?;
    let covering: Vec<&MountGrant> = grant.mounts_of(Path::new(&file.node)).collect();
    if covering.is_empty() {
        return Err(Refused::mount(
            host_path,
            format!("resolves to {}, outside the guest's mount grant", file.node),
        ));
    }
    let control = RUNTIME_CONTROL_PATHS
        .iter()
        .find(|c| Path::new(container_path).starts_with(c));
    let placing: Vec<&&MountGrant> = covering
        .iter()
        .filter(|g| container_matches(&g.container, container_path))
        .filter(|g| control.is_none_or(|c| literal_prefix(&g.container).starts_with(c)))
        .collect();
    if placing.is_empty() {
        let why = match control {
            Some(c) => format!(
                "{c} is read by a runtime hook; only a mount grant whose containerPath names it allows a mount there"
            ),
            None => format!(
                "the grant for {} does not allow container path {}",
                file.node,
                guest_text::quote(container_path)
            ),
        };
        return Err(Refused::mount(container_path, why));
    }
    if writable && !placing.iter().any(|g| g.writable) {
        return Err(Refused::mount(
            host_path,
            "writable mount not granted (the policy's mount entry must say \"writable\": true)",
        ));
    }
    Ok(file.node)
}

/// The reason for an unresolved path: "does not exist" only where the path was granted.
fn unresolved(e: Unresolved, granted: bool, grant: &str) -> String {
    match e {
        Unresolved::NotFound if granted => "does not exist on the node".into(),
        Unresolved::NotFound => format!("outside the guest's {grant} grant"),
        Unresolved::Other(reason) => reason,
    }
}

/// `pattern` matches `path`; `dir/**` also matches `dir` itself.
fn container_matches(pattern: &str, path: &str) -> bool {
    glob(pattern, path) || pattern.strip_suffix("/**") == Some(path)
}

fn is_permission_set(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 3
        && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        && p.chars().enumerate().all(|(i, c)| !p[..i].contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::DeviceGrant;
    use std::os::unix::fs::symlink;

    fn node() -> (tempfile::TempDir, NodeRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["dev/infiniband", "dev/nvidia-caps", "opt/ib/lib", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "dev/infiniband/uverbs0",
            "dev/nvidia0",
            "opt/ib/lib/libibverbs.so",
            "etc/shadow",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        symlink("../nvidia0", root.join("dev/infiniband/uverbs9")).unwrap();
        symlink("/etc", root.join("opt/ib/lib/etc")).unwrap();
        symlink("../../../etc/shadow", root.join("opt/ib/lib/shadow")).unwrap();
        let root = NodeRoot::new(root, DeviceNodes::Simulated);
        (dir, root)
    }

    fn ib_grant() -> Grant {
        Grant {
            devices: vec![DeviceGrant {
                pattern: "/dev/infiniband/*".into(),
                kind: NodeKind::Char,
            }],
            mounts: vec![MountGrant {
                host_root: "/opt/ib".into(),
                container: "/opt/ib/**".into(),
                writable: false,
            }],
            ..Grant::none()
        }
    }

    #[test]
    fn devices_are_judged_where_their_links_lead() {
        let (_dir, root) = node();
        let g = ib_grant();
        let ok = check_device(
            &root,
            &mut Resolutions::default(),
            &g,
            "/dev/infiniband/uverbs0",
            "/dev/infiniband/uverbs0",
            Some("rw"),
        );
        assert_eq!(ok.unwrap().node, "/dev/infiniband/uverbs0");
        let err = check_device(
            &root,
            &mut Resolutions::default(),
            &g,
            "/dev/infiniband/uverbs9",
            "/dev/infiniband/uverbs9",
            Some("rw"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/dev/nvidia0") && err.contains("outside"),
            "{err}"
        );
        for (host, container, perms) in [
            ("/dev/infiniband/uverbs0", "/etc/passwd", "rw"),
            ("/dev/infiniband/uverbs0", "/dev/x", "rwx"),
            ("/dev/infiniband/../nvidia0", "/dev/x", "rw"),
            ("/dev/infiniband/nope", "/dev/x", "rw"),
        ] {
            assert!(
                check_device(
                    &root,
                    &mut Resolutions::default(),
                    &g,
                    host,
                    container,
                    Some(perms)
                )
                .is_err(),
                "{host} {container} {perms}"
            );
        }
    }

    #[test]
    fn real_nodes_must_be_device_nodes_of_the_granted_kind() {
        let (dir, _) = node();
        let real = NodeRoot::new(dir.path(), DeviceNodes::Real);
        let err = check_device(
            &real,
            &mut Resolutions::default(),
            &ib_grant(),
            "/dev/infiniband/uverbs0",
            "/dev/x",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a character or block device"), "{err}");
        // /dev/null is a character device on every Linux machine, no root needed.
        let host = NodeRoot::new("/", DeviceNodes::Real);
        let null = |kind| Grant {
            devices: vec![DeviceGrant {
                pattern: "/dev/null".into(),
                kind,
            }],
            ..Grant::none()
        };
        let file = check_device(
            &host,
            &mut Resolutions::default(),
            &null(NodeKind::Char),
            "/dev/null",
            "/dev/null",
            Some("rw"),
        )
        .unwrap();
        assert_eq!(
            file.kind,
            FileKind::Device {
                kind: NodeKind::Char,
                numbers: Some((1, 3))
            }
        );
        assert!(
            check_device(
                &host,
                &mut Resolutions::default(),
                &null(NodeKind::Block),
                "/dev/null",
                "/dev/null",
                None
            )
            .is_err(),
            "a block grant does not cover a character device"
        );
    }

    #[test]
    fn mounts_are_judged_where_they_lead_and_where_they_go() {
        let (_dir, root) = node();
        let g = ib_grant();
        assert_eq!(
            check_mount(
                &root,
                &mut Resolutions::default(),
                &g,
                "/opt/ib/lib",
                "/opt/ib/lib",
                false
            ),
            Ok("/opt/ib/lib".into())
        );
        assert!(
            check_mount(
                &root,
                &mut Resolutions::default(),
                &g,
                "/opt/ib",
                "/opt/ib",
                false
            )
            .is_ok(),
            "dir/** covers dir"
        );
        for (host, container, writable, fragment) in [
            (
                "/opt/ib/lib/etc",
                "/opt/ib/etc",
                false,
                "outside the guest's mount grant",
            ),
            (
                "/opt/ib/lib/shadow",
                "/opt/ib/shadow",
                false,
                "outside the guest's mount grant",
            ),
            ("/etc", "/opt/ib/etc", false, "outside"),
            (
                "/opt/ib/lib",
                "/usr/lib",
                false,
                "does not allow container path",
            ),
            ("/opt/ib/lib", "/opt/ib/lib", true, "writable"),
            ("/opt/ib/lib", "/", false, "no mount may cover"),
            (
                "/opt/ib/lib",
                "/proc/sys/kernel",
                false,
                "no mount may cover",
            ),
            ("/opt/ib/../../etc", "/opt/ib/x", false, "'..'"),
        ] {
            let err = check_mount(
                &root,
                &mut Resolutions::default(),
                &g,
                host,
                container,
                writable,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(fragment), "{host} -> {container}: {err}");
        }
    }

    #[test]
    fn runtime_control_paths_need_a_grant_that_names_them() {
        let (_dir, root) = node();
        let mut g = ib_grant();
        g.mounts.push(MountGrant {
            host_root: "/dev/nvidia0".into(),
            container: "/**".into(),
            writable: false,
        });
        let err = check_mount(
            &root,
            &mut Resolutions::default(),
            &g,
            "/dev/nvidia0",
            "/var/run/nvidia-container-devices/all",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("runtime hook"), "{err}");
        g.mounts.push(MountGrant {
            host_root: "/dev/nvidia0".into(),
            container: "/var/run/nvidia-container-devices/*".into(),
            writable: false,
        });
        assert!(
            check_mount(
                &root,
                &mut Resolutions::default(),
                &g,
                "/dev/nvidia0",
                "/var/run/nvidia-container-devices/GPU-1",
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn container_patterns_in_policies() {
        assert!(check_container_pattern("/usr/lib/nvidia/**").is_ok());
        for bad in [
            "/", "/**", "/*", "/dev/**", "/proc/x", "/sys/**", "relative", "/a/../b",
        ] {
            assert!(check_container_pattern(bad).is_err(), "{bad}");
        }
    }
}
