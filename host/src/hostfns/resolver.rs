//! The one place where a guest-supplied node path becomes a host path.
//!
//! Every host function goes through [`Resolver`]: it re-roots the path under the host root
//! (`/` on a node, a fixture tree in tests), follows symbolic links the way the kernel
//! would (sysfs is full of relative `../../devices/...` links and a link may be absolute),
//! and refuses the result unless it lies inside one of the roots the guest was granted.
//! A link can never lead above the host root: `..` at the root stays at the root, and an
//! absolute target is taken relative to the host root, exactly like a chroot.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Links followed in one resolution before giving up, as the kernel's `ELOOP` limit.
const MAX_LINKS: usize = 40;
/// Longest node path a guest may name (Linux `PATH_MAX`).
const MAX_PATH_LEN: usize = 4096;

/// Why a guest path was not resolved.
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("path {path:?} is not absolute; name node paths like /sys/bus/pci/devices")]
    NotAbsolute { path: String },
    #[error("path {path:?} is malformed: {reason}")]
    Malformed { path: String, reason: &'static str },
    #[error("path {path:?} resolves to {resolved}, outside this guest's granted roots ({granted})")]
    Denied {
        path: String,
        resolved: String,
        granted: String,
    },
    #[error("path {path:?} does not exist")]
    NotFound { path: String },
    #[error("path {path:?}: too many levels of symbolic links")]
    Loop { path: String },
    #[error("path {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A path after resolution: where it is on this machine and what the node calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Path on the host's filesystem (under the host root).
    pub host: PathBuf,
    /// Canonical node path, e.g. `/sys/devices/pci0000:15/.../0000:18:00.0`.
    pub node: PathBuf,
}

/// Resolves guest paths under a host root, within a set of granted node roots.
#[derive(Debug, Clone)]
pub struct Resolver {
    host_root: PathBuf,
    granted: Vec<PathBuf>,
}

impl Resolver {
    /// `granted` are absolute node paths (e.g. `/sys`, `/dev`); anything else is denied.
    pub fn new(host_root: impl Into<PathBuf>, granted: Vec<PathBuf>) -> Self {
        Self {
            host_root: host_root.into(),
            granted,
        }
    }

    /// The host root every node path is re-rooted under.
    pub fn host_root(&self) -> &Path {
        &self.host_root
    }

    /// Resolves `path`, following every symbolic link including the last component.
    pub fn resolve(&self, path: &str) -> Result<Resolved, ResolveError> {
        self.walk(path, true)
            .and_then(|node| self.granted(path, node))
    }

    /// Resolves `path` without following a link in its last component, so that the
    /// link itself can be read.
    pub fn resolve_nofollow(&self, path: &str) -> Result<Resolved, ResolveError> {
        self.walk(path, false)
            .and_then(|node| self.granted(path, node))
    }

    fn granted(&self, path: &str, node: PathBuf) -> Result<Resolved, ResolveError> {
        if !Self::under_grant(&self.granted, &node) {
            return Err(self.denied(path, &node));
        }
        Ok(Resolved {
            host: self.host_path(&node),
            node,
        })
    }

    fn under_grant(granted: &[PathBuf], node: &Path) -> bool {
        granted.iter().any(|root| node.starts_with(root))
    }

    fn denied(&self, path: &str, node: &Path) -> ResolveError {
        ResolveError::Denied {
            path: path.to_owned(),
            resolved: node.display().to_string(),
            granted: self
                .granted
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn host_path(&self, node: &Path) -> PathBuf {
        match node.strip_prefix("/") {
            Ok(relative) => self.host_root.join(relative),
            Err(_) => self.host_root.join(node),
        }
    }

    /// Walks `path` component by component from the node's `/`, expanding links.
    /// Returns the canonical node path; fails when a component does not exist.
    fn walk(&self, path: &str, follow_last: bool) -> Result<PathBuf, ResolveError> {
        if path.len() > MAX_PATH_LEN {
            return Err(ResolveError::Malformed {
                path: truncate(path),
                reason: "longer than 4096 bytes",
            });
        }
        if path.contains('\0') {
            return Err(ResolveError::Malformed {
                path: path.to_owned(),
                reason: "contains a NUL byte",
            });
        }
        if !path.starts_with('/') {
            return Err(ResolveError::NotAbsolute {
                path: path.to_owned(),
            });
        }

        // Components still to walk, last one at the end of the vector (a stack).
        let mut pending: Vec<OsString> = components_reversed(Path::new(path));
        let mut resolved = PathBuf::from("/");
        let mut links = 0usize;

        while let Some(component) = pending.pop() {
            if component == ".." {
                resolved.pop();
                continue;
            }
            resolved.push(&component);
            let is_last = pending.is_empty();
            let host = self.host_path(&resolved);
            let meta = match std::fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Say "denied", not "not found", where the walk had already left the
                    // grant (a guest must not probe what exists outside it); on the way
                    // to a granted root, "not found" is no news.
                    let on_the_way = self.granted.iter().any(|root| root.starts_with(&resolved));
                    if on_the_way || Self::under_grant(&self.granted, &resolved) {
                        return Err(ResolveError::NotFound {
                            path: path.to_owned(),
                        });
                    }
                    return Err(self.denied(path, &resolved));
                }
                Err(source) => {
                    return Err(ResolveError::Io {
                        path: path.to_owned(),
                        source,
                    });
                }
            };
            if !meta.file_type().is_symlink() || (is_last && !follow_last) {
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(ResolveError::Loop {
                    path: path.to_owned(),
                });
            }
            let target = std::fs::read_link(&host).map_err(|source| ResolveError::Io {
                path: path.to_owned(),
                source,
            })?;
            resolved.pop();
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            pending.extend(components_reversed(&target));
        }
        Ok(resolved)
    }
}

/// Normal and `..` components of `path`, reversed so the first one pops first.
/// `.` and the root are dropped: every walk starts at `/` anyway.
fn components_reversed(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    out.reverse();
    out
}

fn truncate(path: &str) -> String {
    let mut end = 64.min(path.len());
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, Resolver) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("sys/devices/pci0000:00/0000:00:01.0")).unwrap();
        std::fs::write(
            root.join("sys/devices/pci0000:00/0000:00:01.0/vendor"),
            "0x10de\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:01.0",
            root.join("sys/bus/pci/devices/0000:00:01.0"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/shadow"), "secret").unwrap();
        symlink("/etc/shadow", root.join("sys/escape-absolute")).unwrap();
        symlink(
            "../../../../../etc/shadow",
            root.join("sys/bus/escape-relative"),
        )
        .unwrap();
        symlink("/sys/devices/pci0000:00", root.join("sys/abs-inside")).unwrap();
        symlink("loop-b", root.join("sys/loop-a")).unwrap();
        symlink("loop-a", root.join("sys/loop-b")).unwrap();
        let resolver = Resolver::new(root, vec![PathBuf::from("/sys")]);
        (dir, resolver)
    }

    #[test]
    fn follows_relative_sysfs_links_to_the_canonical_path() {
        let (dir, r) = tree();
        let got = r
            .resolve("/sys/bus/pci/devices/0000:00:01.0/vendor")
            .unwrap();
        assert_eq!(
            got.node,
            Path::new("/sys/devices/pci0000:00/0000:00:01.0/vendor")
        );
        assert_eq!(
            got.host,
            dir.path()
                .join("sys/devices/pci0000:00/0000:00:01.0/vendor")
        );
    }

    #[test]
    fn absolute_links_are_re_rooted_under_the_host_root() {
        let (_dir, r) = tree();
        let got = r.resolve("/sys/abs-inside/0000:00:01.0").unwrap();
        assert_eq!(got.node, Path::new("/sys/devices/pci0000:00/0000:00:01.0"));
    }

    #[test]
    fn links_pointing_outside_the_grant_are_denied() {
        let (_dir, r) = tree();
        assert!(matches!(
            r.resolve("/sys/escape-absolute"),
            Err(ResolveError::Denied { .. })
        ));
        // `..` above the host root stays at the root, then /etc is outside the grant.
        assert!(matches!(
            r.resolve("/sys/bus/escape-relative"),
            Err(ResolveError::Denied { .. })
        ));
    }

    #[test]
    fn dot_dot_and_foreign_absolute_paths_are_denied() {
        let (_dir, r) = tree();
        assert!(matches!(
            r.resolve("/sys/../etc/shadow"),
            Err(ResolveError::Denied { .. })
        ));
        assert!(matches!(
            r.resolve("/etc/shadow"),
            Err(ResolveError::Denied { .. })
        ));
        assert!(matches!(
            r.resolve("/../../etc/shadow"),
            Err(ResolveError::Denied { .. })
        ));
    }

    #[test]
    fn relative_empty_and_nul_paths_are_refused() {
        let (_dir, r) = tree();
        assert!(matches!(
            r.resolve("sys/bus"),
            Err(ResolveError::NotAbsolute { .. })
        ));
        assert!(matches!(
            r.resolve(""),
            Err(ResolveError::NotAbsolute { .. })
        ));
        assert!(matches!(
            r.resolve("/sys/\0"),
            Err(ResolveError::Malformed { .. })
        ));
        let long = format!("/sys/{}", "a".repeat(5000));
        assert!(matches!(
            r.resolve(&long),
            Err(ResolveError::Malformed { .. })
        ));
    }

    #[test]
    fn link_loops_end_with_an_error() {
        let (_dir, r) = tree();
        assert!(matches!(
            r.resolve("/sys/loop-a"),
            Err(ResolveError::Loop { .. })
        ));
    }

    #[test]
    fn nofollow_keeps_the_last_link() {
        let (_dir, r) = tree();
        let got = r
            .resolve_nofollow("/sys/bus/pci/devices/0000:00:01.0")
            .unwrap();
        assert_eq!(got.node, Path::new("/sys/bus/pci/devices/0000:00:01.0"));
        // The link itself lies inside the grant even though its target would not.
        assert!(r.resolve_nofollow("/sys/escape-absolute").is_ok());
    }

    #[test]
    fn missing_paths_are_not_found_inside_the_grant_and_denied_outside() {
        let (_dir, r) = tree();
        assert!(matches!(
            r.resolve("/sys/nope"),
            Err(ResolveError::NotFound { .. })
        ));
        assert!(matches!(
            r.resolve("/root/.ssh/id_rsa"),
            Err(ResolveError::Denied { .. })
        ));
    }

    /// Fuzz-style property check (deterministic, so it runs in every CI build): random
    /// paths through a random tree of directories and links, some pointing outside the
    /// grant or the host root. Whatever the input, a resolved path lies inside the grant,
    /// and opening it cannot follow a link anywhere else (it contains none).
    #[test]
    fn random_paths_never_leave_the_grant() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let names = [
            "a", "b", "c", "granted", "granted", "..", ".", "l0", "l1", "l2", "l3", "etc", "sys",
        ];
        let dirs = [
            "sys",
            "sys/granted",
            "sys/granted/a",
            "sys/granted/a/b",
            "sys/other",
            "etc",
        ];
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("f"), "x").unwrap();
        }
        for (i, d) in dirs.iter().enumerate() {
            for l in 0..4 {
                let ups = rng.below(6);
                let mut target = String::new();
                if rng.below(3) == 0 {
                    target.push('/');
                } else {
                    target.push_str(&"../".repeat(ups as usize));
                }
                for _ in 0..rng.below(4) {
                    target.push_str(names[rng.below(names.len() as u64) as usize]);
                    target.push('/');
                }
                target.push_str(["f", "granted", "a", "etc", ""][rng.below(5) as usize]);
                let link = root.join(d).join(format!("l{l}"));
                let _ = std::os::unix::fs::symlink(&target, &link);
                let _ = i;
            }
        }
        let r = Resolver::new(&root, vec![PathBuf::from("/sys/granted")]);
        let mut resolved_count = 0;
        for _ in 0..20_000 {
            let mut path = String::from(if rng.below(4) == 0 { "/" } else { "/sys/" });
            for _ in 0..1 + rng.below(7) {
                path.push_str(names[rng.below(names.len() as u64) as usize]);
                path.push('/');
            }
            if rng.below(2) == 0 {
                path.push('f');
            }
            for resolved in [r.resolve(&path), r.resolve_nofollow(&path)]
                .into_iter()
                .flatten()
            {
                resolved_count += 1;
                assert!(
                    resolved.node.starts_with("/sys/granted"),
                    "{path} -> {resolved:?}"
                );
                assert!(
                    resolved.host.starts_with(root.join("sys/granted")),
                    "{path} -> {resolved:?}"
                );
            }
            if let Ok(resolved) = r.resolve(&path) {
                let real = resolved.host.canonicalize().unwrap();
                assert_eq!(real, resolved.host, "{path}: the OS would follow a link");
            }
        }
        assert!(
            resolved_count > 500,
            "the generator must also reach the grant ({resolved_count})"
        );
    }

    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }
}
