//! The one place where a guest-supplied node path becomes a host file.
//!
//! Every host function goes through [`Resolver`]: it re-roots the path under the host root
//! (`/` on a node, a fixture tree in tests), follows symbolic links the way the kernel
//! does (sysfs is full of relative `../../devices/...` links and a link may be absolute),
//! and refuses the result unless it lies inside one of the roots the guest was granted.
//! A link can never lead above the host root: `..` at the root stays at the root, and an
//! absolute target is taken relative to the host root, exactly like a chroot.
//!
//! The kernel does the resolution and the open in one step: `openat2(2)` on the host
//! root's directory with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` yields an `O_PATH`
//! descriptor of the node, so nothing can swap a link between the check and the open;
//! the grant is then checked against the path the kernel reports for that descriptor
//! (`/proc/self/fd/N`). The descriptor ([`NodeFile`]) is what host functions read,
//! list and write through; opening it for I/O happens only after the grant check, so a
//! refused path is never opened for real (opening `/dev/watchdog` has effects).
//! Where the kernel lacks `openat2` (before 5.6, or a seccomp filter refuses it), the
//! resolver walks the path itself, component by component, and opens the result with
//! `O_NOFOLLOW`. The walk also classifies failures, so that a path outside the grant is
//! "denied" whether or not it exists.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use thiserror::Error;

use super::node_file::NodeFile;

/// Links followed in one resolution before giving up, as the kernel's `ELOOP` limit.
const MAX_LINKS: usize = 40;
/// Longest node path a guest may name (Linux `PATH_MAX`).
const MAX_PATH_LEN: usize = 4096;
/// `openat2` answers `EAGAIN` when a rename raced a `..` under `RESOLVE_IN_ROOT`.
const MAX_RETRIES: usize = 16;

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
    /// `/proc/<pid>/root`, `/proc/<pid>/fd/N` and their kind jump to wherever the kernel
    /// says, not to a path: they could lead out of the host root, so they are not followed.
    #[error("path {path:?} goes through a /proc magic link, which the host never follows")]
    MagicLink { path: String },
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
    /// The host root's directory, opened on first use and shared by every clone (and by
    /// [`Resolver::with_grant`]), so each resolution starts from the same directory.
    root: Arc<OnceLock<Arc<Root>>>,
    /// Tests and the fuzz target set this to exercise the fallback on any kernel.
    walk_only: bool,
}

/// The host root, opened once, and what this kernel offers to resolve under it.
#[derive(Debug)]
pub(super) struct Root {
    /// `O_PATH | O_DIRECTORY` descriptor of the host root.
    pub(super) fd: OwnedFd,
    /// The host root as `/proc/self/fd` names it; none where /proc cannot say.
    kernel_path: Option<PathBuf>,
    /// Whether `openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` works here, and
    /// /proc can name what it opened.
    openat2: bool,
}

impl Root {
    fn open(host_root: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            host_root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot open the host root {}: {e}", host_root.display()),
            )
        })?;
        let kernel_path = fd_path(&fd).ok().filter(|p| p.is_absolute());
        // ENOSYS before Linux 5.6; EPERM or ENOSYS under a seccomp profile that predates
        // it; EINVAL/E2BIG where a flag is unknown. Any failure on the root itself means
        // the walk is the only way.
        let probe = openat2_in_root(&fd, ".", OFlags::PATH);
        let openat2 = probe.is_ok() && kernel_path.is_some();
        if !openat2 {
            // Once per host root: the fallback checks before it opens, so an operator
            // should know that a node runs it.
            tracing::warn!(
                host_root = %host_root.display(),
                openat2 = ?probe.err(),
                proc_self_fd = kernel_path.is_some(),
                "openat2 or /proc/self/fd is unavailable; guest paths are resolved by \
                 walking them (Linux >= 5.6 and a seccomp profile allowing openat2 resolve \
                 and open in one step)"
            );
        }
        Ok(Self {
            fd,
            kernel_path,
            openat2,
        })
    }

    /// The node path of a host file the kernel named `kernel` (from `/proc/self/fd`).
    fn node_path(&self, kernel: &Path) -> Option<PathBuf> {
        let relative = kernel.strip_prefix(self.kernel_path.as_ref()?).ok()?;
        Some(Path::new("/").join(relative))
    }
}

/// `openat2(dirfd, path, flags | O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn openat2_in_root(dirfd: &OwnedFd, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            dirfd,
            path,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::AGAIN | Errno::INTR) if tries < MAX_RETRIES => tries += 1,
            result => return result,
        }
    }
}

/// The path the kernel has for an open descriptor.
pub(super) fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Resolver {
    /// `granted` are absolute node paths (e.g. `/sys`, `/dev`); anything else is denied.
    pub fn new(host_root: impl Into<PathBuf>, granted: Vec<PathBuf>) -> Self {
        Self {
            host_root: host_root.into(),
            granted,
            root: Arc::default(),
            walk_only: false,
        }
    }

    /// The same host root (and its open directory) with other granted roots: for a
    /// host function whose grant is not the guest's read grant (writes, CDI specs).
    pub fn with_grant(&self, granted: Vec<PathBuf>) -> Self {
        Self {
            granted,
            ..self.clone()
        }
    }

    /// The resolver a kernel without `openat2` gets, whatever this kernel offers.
    #[cfg(any(test, fuzzing))]
    pub fn force_fallback(mut self) -> Self {
        self.walk_only = true;
        self
    }

    /// Whether resolutions are the kernel's `openat2` (else the walk).
    #[cfg(any(test, fuzzing))]
    pub fn uses_openat2(&self) -> Result<bool, ResolveError> {
        let root = self.root("/")?;
        Ok(self.one_step(&root))
    }

    /// The host root every node path is re-rooted under.
    pub fn host_root(&self) -> &Path {
        &self.host_root
    }

    /// Opens `path` (`O_PATH`), following every symbolic link including the last
    /// component, and checks the node it reaches against the grant.
    pub fn open(&self, path: &str) -> Result<NodeFile, ResolveError> {
        self.open_checked(path, true)
    }

    /// Like [`Resolver::open`] without following a link in the last component, so that
    /// the link itself can be read (or refused where a file is expected).
    pub fn open_nofollow(&self, path: &str) -> Result<NodeFile, ResolveError> {
        self.open_checked(path, false)
    }

    /// Resolves `path`, following every symbolic link including the last component.
    pub fn resolve(&self, path: &str) -> Result<Resolved, ResolveError> {
        self.open(path).map(|file| file.resolved())
    }

    /// Resolves `path` without following a link in its last component, so that the
    /// link itself can be read.
    pub fn resolve_nofollow(&self, path: &str) -> Result<Resolved, ResolveError> {
        self.open_nofollow(path).map(|file| file.resolved())
    }

    /// Opens the directory `path`, first creating it and any missing parents, each inside
    /// its parent as the kernel resolved it (so a `/var/run -> /run` link is followed, and
    /// no link leads a `mkdir` out of the host root); then opens it within the grant.
    pub fn create_dir_all(&self, path: &str) -> Result<NodeFile, ResolveError> {
        check_syntax(path)?;
        let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if names.iter().any(|&name| name == "." || name == "..") {
            return Err(ResolveError::Malformed {
                path: path.to_owned(),
                reason: "a directory to create is named without . or ..",
            });
        }
        // Nothing is created for a path that names a place outside the grant.
        if !self.under_grant(Path::new(path)) {
            return Err(self.denied(path, Path::new(path)));
        }
        // Usually it is there already: one open, no walk.
        match self.open(path) {
            Err(ResolveError::NotFound { .. }) => {}
            opened => return opened,
        }
        let anywhere = self.with_grant(vec![PathBuf::from("/")]);
        let mut parent = anywhere.open("/")?;
        let mut prefix = String::new();
        for name in names {
            prefix.push('/');
            prefix.push_str(name);
            parent = match anywhere.open(&prefix) {
                Err(ResolveError::NotFound { .. }) => {
                    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                        // EEXIST: another process was quicker.
                        Ok(()) | Err(Errno::EXIST) => anywhere.open(&prefix)?,
                        Err(e) => {
                            return Err(ResolveError::Io {
                                path: path.to_owned(),
                                source: e.into(),
                            });
                        }
                    }
                }
                other => other?,
            };
        }
        self.open(path)
    }

    fn root(&self, path: &str) -> Result<Arc<Root>, ResolveError> {
        if let Some(root) = self.root.get() {
            return Ok(root.clone());
        }
        let root = Root::open(&self.host_root).map_err(|source| ResolveError::Io {
            path: path.to_owned(),
            source,
        })?;
        // Two threads may race to open it; one descriptor wins, the other is closed.
        Ok(self.root.get_or_init(|| Arc::new(root)).clone())
    }

    fn one_step(&self, root: &Root) -> bool {
        !self.walk_only && root.openat2
    }

    fn open_checked(&self, path: &str, follow_last: bool) -> Result<NodeFile, ResolveError> {
        check_syntax(path)?;
        let root = self.root(path)?;
        if !self.one_step(&root) {
            return self.open_walked(path, follow_last, root);
        }
        let relative = path.trim_start_matches('/');
        let relative = if relative.is_empty() { "." } else { relative };
        let flags = if follow_last {
            OFlags::PATH
        } else {
            OFlags::PATH | OFlags::NOFOLLOW
        };
        let fd = openat2_in_root(&root.fd, relative, flags)
            .map_err(|errno| self.classify(path, follow_last, errno))?;
        let kernel = fd_path(&fd).map_err(|source| ResolveError::Io {
            path: path.to_owned(),
            source,
        })?;
        // RESOLVE_IN_ROOT keeps the node under the root; a name outside it means the root
        // itself moved since it was opened, and nothing below it can be trusted.
        let node = root
            .node_path(&kernel)
            .ok_or_else(|| self.denied(path, &kernel))?;
        if !self.under_grant(&node) {
            return Err(self.denied(path, &node));
        }
        let host = self.host_path(&node);
        Ok(NodeFile::new(fd, node, host, root, true))
    }

    /// The fallback: the walk decides, then the node is opened without following a link
    /// in its last component (the walk left none there, unless the tree just changed).
    fn open_walked(
        &self,
        path: &str,
        follow_last: bool,
        root: Arc<Root>,
    ) -> Result<NodeFile, ResolveError> {
        let node = self.walk(path, follow_last)?;
        if !self.under_grant(&node) {
            return Err(self.denied(path, &node));
        }
        let relative = relative(&node);
        let fd = rustix::fs::openat(
            &root.fd,
            relative,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| match errno {
            Errno::NOENT => ResolveError::NotFound {
                path: path.to_owned(),
            },
            errno => ResolveError::Io {
                path: path.to_owned(),
                source: errno.into(),
            },
        })?;
        let host = self.host_path(&node);
        Ok(NodeFile::new(fd, node, host, root, false))
    }

    /// Turns an `openat2` failure into the walk's verdict where the walk says the path
    /// leaves the grant (a guest learns nothing of what exists outside it), otherwise
    /// into what the kernel said.
    fn classify(&self, path: &str, follow_last: bool, errno: Errno) -> ResolveError {
        let walk_loops = match self.walk(path, follow_last) {
            Err(denied @ ResolveError::Denied { .. }) => return denied,
            Ok(node) if !self.under_grant(&node) => return self.denied(path, &node),
            walked => matches!(walked, Err(ResolveError::Loop { .. })),
        };
        let path = path.to_owned();
        match errno {
            Errno::NOENT => ResolveError::NotFound { path },
            Errno::LOOP if walk_loops => ResolveError::Loop { path },
            // The walk, which takes a magic link for an ordinary one, got through.
            Errno::LOOP => ResolveError::MagicLink { path },
            errno => ResolveError::Io {
                path,
                source: errno.into(),
            },
        }
    }

    fn under_grant(&self, node: &Path) -> bool {
        self.granted.iter().any(|root| node.starts_with(root))
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
            Ok(relative) if relative.as_os_str().is_empty() => self.host_root.clone(),
            Ok(relative) => self.host_root.join(relative),
            Err(_) => self.host_root.join(node),
        }
    }

    /// A path the walk could not go through: "not found" (or the error) on the way to
    /// a granted root or inside one; "denied" where the walk had already left the grant
    /// (a guest must not probe what exists outside it).
    fn missing(&self, path: &str, resolved: &Path, source: io::Error) -> ResolveError {
        let on_the_way = self.granted.iter().any(|root| root.starts_with(resolved));
        if !on_the_way && !self.under_grant(resolved) {
            return self.denied(path, resolved);
        }
        if source.kind() == io::ErrorKind::NotFound {
            ResolveError::NotFound {
                path: path.to_owned(),
            }
        } else {
            ResolveError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }

    /// Walks `path` component by component from the node's `/`, expanding links as the
    /// kernel's path walk does: a component after a non-directory is `ENOTDIR`, a
    /// trailing `/` (also in a link's target) follows the last link and needs a
    /// directory. Returns the canonical node path; fails when a component does not exist.
    fn walk(&self, path: &str, follow_last: bool) -> Result<PathBuf, ResolveError> {
        check_syntax(path)?;
        // Components still to walk, last one at the end of the vector (a stack).
        let mut pending = components_reversed(path.as_bytes());
        let mut resolved = PathBuf::from("/");
        let mut is_dir = true;
        let mut links = 0usize;

        while let Some(component) = pending.pop() {
            if !is_dir {
                let source = io::Error::from(io::ErrorKind::NotADirectory);
                return Err(self.missing(path, &resolved, source));
            }
            if component == "." {
                continue;
            }
            if component == ".." {
                resolved.pop();
                continue;
            }
            resolved.push(&component);
            let is_last = pending.is_empty();
            let host = self.host_path(&resolved);
            let meta = match std::fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Err(self.missing(path, &resolved, e));
                }
                Err(source) => {
                    return Err(ResolveError::Io {
                        path: path.to_owned(),
                        source,
                    });
                }
            };
            if !meta.file_type().is_symlink() || (is_last && !follow_last) {
                is_dir = meta.is_dir();
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
            pending.extend(components_reversed(target.as_os_str().as_bytes()));
        }
        Ok(resolved)
    }
}

/// A guest path the resolver will look at: absolute, bounded, without NUL.
fn check_syntax(path: &str) -> Result<(), ResolveError> {
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
    Ok(())
}

/// The components of `path`, reversed so the first one pops first, with `.` and `..`
/// kept and a trailing `/` written as a last `.` (the kernel's "must be a directory").
fn components_reversed(path: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| std::ffi::OsStr::from_bytes(c).to_os_string())
        .collect();
    if path.ends_with(b"/") && !out.is_empty() {
        out.push(OsString::from("."));
    }
    out.reverse();
    out
}

/// `node` without its leading `/`, for the `*at` calls relative to the host root.
pub(super) fn relative(node: &Path) -> &Path {
    match node.strip_prefix("/") {
        Ok(relative) if relative.as_os_str().is_empty() => Path::new("."),
        Ok(relative) => relative,
        Err(_) => node,
    }
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
        // In a fixture /proc/self/root is an ordinary link; on a node it is a magic one.
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        symlink("/", root.join("proc/self/root")).unwrap();
        let resolver = Resolver::new(root, vec![PathBuf::from("/sys")]);
        (dir, resolver)
    }

    /// The resolver as this kernel runs it (`openat2`) and as an older one would (the
    /// walk): every behaviour below holds for both.
    fn modes(r: &Resolver) -> [(&'static str, Resolver); 2] {
        [("openat2", r.clone()), ("walk", r.clone().force_fallback())]
    }

    #[test]
    fn this_kernel_resolves_with_openat2_and_the_fallback_can_be_forced() {
        let (_dir, r) = tree();
        assert!(
            r.uses_openat2().unwrap(),
            "openat2 (Linux 5.6) is refused here, so only the fallback is tested"
        );
        assert!(!r.clone().force_fallback().uses_openat2().unwrap());
    }

    #[test]
    fn follows_relative_sysfs_links_to_the_canonical_path() {
        let (dir, r) = tree();
        for (mode, r) in modes(&r) {
            let got = r
                .resolve("/sys/bus/pci/devices/0000:00:01.0/vendor")
                .unwrap();
            assert_eq!(
                got.node,
                Path::new("/sys/devices/pci0000:00/0000:00:01.0/vendor"),
                "{mode}"
            );
            assert_eq!(
                got.host,
                dir.path()
                    .join("sys/devices/pci0000:00/0000:00:01.0/vendor"),
                "{mode}"
            );
        }
    }

    #[test]
    fn absolute_links_are_re_rooted_under_the_host_root() {
        let (_dir, r) = tree();
        for (mode, r) in modes(&r) {
            let got = r.resolve("/sys/abs-inside/0000:00:01.0").unwrap();
            assert_eq!(
                got.node,
                Path::new("/sys/devices/pci0000:00/0000:00:01.0"),
                "{mode}"
            );
        }
    }

    #[test]
    fn links_pointing_outside_the_grant_are_denied() {
        let (_dir, r) = tree();
        for (mode, r) in modes(&r) {
            for path in [
                "/sys/escape-absolute",
                // `..` above the host root stays at the root, then /etc is outside the grant.
                "/sys/bus/escape-relative",
                "/sys/escape-absolute/",
                "/sys/bus/escape-relative/x",
            ] {
                let got = r.resolve(path);
                assert!(
                    matches!(got, Err(ResolveError::Denied { .. })),
                    "{mode} {path}: {got:?}"
                );
            }
        }
    }

    /// With everything granted, a link out of the host root still lands inside it: the
    /// fixture's own /etc/shadow, never the machine's.
    #[test]
    fn escaping_links_land_under_the_host_root() {
        let (dir, r) = tree();
        let r = r.with_grant(vec![PathBuf::from("/")]);
        for (mode, r) in modes(&r) {
            for path in ["/sys/escape-absolute", "/sys/bus/escape-relative"] {
                let file = r.open(path).unwrap();
                assert_eq!(file.node(), Path::new("/etc/shadow"), "{mode} {path}");
                assert_eq!(file.host(), dir.path().join("etc/shadow"), "{mode} {path}");
                assert_eq!(file.read(100).unwrap(), b"secret", "{mode} {path}");
            }
        }
    }

    #[test]
    fn proc_self_root_links_stay_in_the_fixture() {
        let (_dir, r) = tree();
        let proc_only = r.with_grant(vec![PathBuf::from("/proc")]);
        for (mode, r) in modes(&proc_only) {
            let got = r.resolve("/proc/self/root/etc/shadow");
            assert!(
                matches!(got, Err(ResolveError::Denied { .. })),
                "{mode}: {got:?}"
            );
        }
        let everything = r.with_grant(vec![PathBuf::from("/")]);
        for (mode, r) in modes(&everything) {
            let got = r.resolve("/proc/self/root/etc/shadow").unwrap();
            assert_eq!(got.node, Path::new("/etc/shadow"), "{mode}");
        }
    }

    /// On the real /proc, `/proc/self/root` and `/proc/self/fd/N` are magic links: the
    /// kernel jumps to an object, not a path. `openat2` refuses them
    /// (`RESOLVE_NO_MAGICLINKS`); the walk takes them as text, re-rooted, so the result
    /// stays under the host root and inside the grant.
    #[test]
    fn real_magic_links_are_refused_or_stay_inside_the_grant() {
        let outside = tempfile::NamedTempFile::new().unwrap();
        let fd_link = format!("/proc/self/fd/{}", outside.as_file().as_raw_fd());
        let proc_only = Resolver::new("/", vec![PathBuf::from("/proc")]);
        for (mode, r) in modes(&proc_only) {
            for path in ["/proc/self/root/etc/passwd", fd_link.as_str()] {
                let got = r.open(path);
                assert!(
                    matches!(
                        got,
                        Err(ResolveError::Denied { .. } | ResolveError::MagicLink { .. })
                    ),
                    "{mode} {path}: {got:?}"
                );
            }
        }
        let everything = Resolver::new("/", vec![PathBuf::from("/")]);
        for path in ["/proc/self/root/etc/passwd", fd_link.as_str()] {
            let got = everything.open(path);
            assert!(
                matches!(got, Err(ResolveError::MagicLink { .. })),
                "openat2 {path}: {got:?}"
            );
        }
        let walked = everything
            .clone()
            .force_fallback()
            .resolve("/proc/self/root/etc/passwd")
            .unwrap();
        assert_eq!(walked.node, Path::new("/etc/passwd"));
    }

    #[test]
    fn dot_dot_and_foreign_absolute_paths_are_denied() {
        let (_dir, r) = tree();
        for (mode, r) in modes(&r) {
            for path in ["/sys/../etc/shadow", "/etc/shadow", "/../../etc/shadow"] {
                let got = r.resolve(path);
                assert!(
                    matches!(got, Err(ResolveError::Denied { .. })),
                    "{mode} {path}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn relative_empty_and_nul_paths_are_refused() {
        let (_dir, r) = tree();
        for (mode, r) in modes(&r) {
            assert!(
                matches!(r.resolve("sys/bus"), Err(ResolveError::NotAbsolute { .. })),
                "{mode}"
            );
            assert!(
                matches!(r.resolve(""), Err(ResolveError::NotAbsolute { .. })),
                "{mode}"
            );
            assert!(
                matches!(r.resolve("/sys/\0"), Err(ResolveError::Malformed { .. })),
                "{mode}"
            );
            let long = format!("/sys/{}", "a".repeat(5000));
            assert!(
                matches!(r.resolve(&long), Err(ResolveError::Malformed { .. })),
                "{mode}"
            );
        }
    }

    #[test]
    fn link_loops_end_with_an_error() {
        let (_dir, r) = tree();
        for (mode, r) in modes(&r) {
            let got = r.resolve("/sys/loop-a");
            assert!(
                matches!(got, Err(ResolveError::Loop { .. })),
                "{mode}: {got:?}"
            );
        }
    }

    #[test]
    fn nofollow_keeps_the_last_link() {
        let (_dir, r) = tree();
        for (mode, r) in modes(&r) {
            let got = r
                .resolve_nofollow("/sys/bus/pci/devices/0000:00:01.0")
                .unwrap();
            assert_eq!(
                got.node,
                Path::new("/sys/bus/pci/devices/0000:00:01.0"),
                "{mode}"
            );
            // The link itself lies inside the grant even though its target would not.
            let link = r.open_nofollow("/sys/escape-absolute").unwrap();
            assert_eq!(
                link.read_link().unwrap(),
                Path::new("/etc/shadow"),
                "{mode}"
            );
            // A trailing slash follows the link, as the kernel does.
            let got = r.resolve_nofollow("/sys/bus/pci/devices/0000:00:01.0/");
            assert_eq!(
                got.unwrap().node,
                Path::new("/sys/devices/pci0000:00/0000:00:01.0"),
                "{mode}"
            );
        }
    }

    #[test]
    fn missing_paths_are_not_found_inside_the_grant_and_denied_outside() {
        let (_dir, r) = tree();
        for (mode, r) in modes(&r) {
            for (path, found) in [("/sys/nope", true), ("/root/.ssh/id_rsa", false)] {
                let got = r.resolve(path);
                if found {
                    assert!(matches!(got, Err(ResolveError::NotFound { .. })), "{mode}");
                } else {
                    assert!(matches!(got, Err(ResolveError::Denied { .. })), "{mode}");
                }
            }
            // A file outside the grant is not told apart from a missing one by ENOTDIR.
            let got = r.resolve("/etc/shadow/x");
            assert!(
                matches!(got, Err(ResolveError::Denied { .. })),
                "{mode}: {got:?}"
            );
            let got = r.resolve("/sys/devices/pci0000:00/0000:00:01.0/vendor/");
            assert!(
                matches!(got, Err(ResolveError::Io { .. })),
                "{mode}: {got:?}"
            );
        }
    }

    #[test]
    fn create_dir_all_creates_under_the_host_root_through_links() {
        let (dir, r) = tree();
        std::fs::create_dir_all(dir.path().join("var")).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        symlink("/run", dir.path().join("var/run")).unwrap();
        symlink(
            "../../../../../../../../../../..",
            dir.path().join("var/up"),
        )
        .unwrap();
        let anywhere = r.with_grant(vec![PathBuf::from("/")]);
        for (mode, r) in modes(&anywhere) {
            let cdi = r.create_dir_all(&format!("/var/run/cdi-{mode}")).unwrap();
            assert_eq!(cdi.node(), Path::new("/run").join(format!("cdi-{mode}")));
            assert!(dir.path().join(format!("run/cdi-{mode}")).is_dir());
            let up = r.create_dir_all(&format!("/var/up/out-{mode}/x")).unwrap();
            assert_eq!(up.node(), Path::new("/").join(format!("out-{mode}/x")));
            assert!(dir.path().join(format!("out-{mode}/x")).is_dir());
        }
        let got = r.create_dir_all("/etc/new");
        assert!(matches!(got, Err(ResolveError::Denied { .. })), "{got:?}");
    }

    /// Fuzz-style property check (deterministic, so it runs in every CI build): random
    /// paths through a random tree of directories and links, some pointing outside the
    /// grant or the host root. Whatever the input, a resolved path lies inside the grant,
    /// opening it cannot follow a link anywhere else (it contains none), and the walk
    /// (the fallback, and what classifies errors) says what the kernel's `openat2` says.
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
        for d in dirs {
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
            }
        }
        let r = Resolver::new(&root, vec![PathBuf::from("/sys/granted")]);
        let walk = r.clone().force_fallback();
        assert!(r.uses_openat2().unwrap());
        let mut resolved_count = 0;
        for _ in 0..20_000 {
            let mut path =
                String::from(["/", "/sys/granted/", "/sys/", "/sys/"][rng.below(4) as usize]);
            for _ in 0..1 + rng.below(7) {
                // Now and then a file in the middle: the kernel says ENOTDIR there.
                let name = if rng.below(16) == 0 {
                    "f"
                } else {
                    names[rng.below(names.len() as u64) as usize]
                };
                path.push_str(name);
                path.push('/');
            }
            if rng.below(2) == 0 {
                path.push('f');
            }
            for follow in [true, false] {
                let kernel = r.open_checked(&path, follow).map(|f| f.resolved());
                let walked = walk.open_checked(&path, follow).map(|f| f.resolved());
                match (&kernel, &walked) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{path} (follow {follow})"),
                    (Err(a), Err(b)) => assert_eq!(
                        std::mem::discriminant(a),
                        std::mem::discriminant(b),
                        "{path} (follow {follow}): openat2 {a} / walk {b}"
                    ),
                    _ => panic!("{path} (follow {follow}): openat2 {kernel:?} / walk {walked:?}"),
                }
                if let Ok(resolved) = kernel {
                    resolved_count += 1;
                    assert!(
                        resolved.node.starts_with("/sys/granted"),
                        "{path} -> {resolved:?}"
                    );
                    assert!(
                        resolved.host.starts_with(root.join("sys/granted")),
                        "{path} -> {resolved:?}"
                    );
                    if follow {
                        let real = resolved.host.canonicalize().unwrap();
                        assert_eq!(real, resolved.host, "{path}: the OS would follow a link");
                    }
                }
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
