//! A node path the [`Resolver`](super::resolver::Resolver) opened: the descriptor host
//! functions read, list and write through.
//!
//! The resolver opens with `O_PATH`, which names a file without opening it: no driver's
//! `open` runs, a FIFO does not block, a device does nothing. What a host function needs
//! is checked on that descriptor first (`fstat`: a regular file to read or write, a
//! directory to list, a link to read), and only then is the file opened for I/O, always
//! non-blocking and never as a controlling terminal. The I/O open goes through
//! `/proc/self/fd/N`, which reaches the very file the resolver checked; in the fallback
//! (a kernel without `openat2`, which may lack a usable /proc too) the node path is
//! opened again with `O_NOFOLLOW` and must turn out to be the same inode.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use thiserror::Error;

use super::resolver::{Resolved, Root, relative};

/// A resolved node path, held open (`O_PATH`) and already checked against the grant.
#[derive(Debug)]
pub struct NodeFile {
    fd: OwnedFd,
    node: PathBuf,
    host: PathBuf,
    root: Arc<Root>,
    /// Re-open through `/proc/self/fd` (the `openat2` path) or by name (the fallback).
    via_proc: bool,
}

/// What kind of file a node is, as `fstat` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl FileKind {
    pub fn of(stat: &Stat) -> Self {
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Self::Regular,
            FileType::Directory => Self::Directory,
            FileType::Symlink => Self::Symlink,
            FileType::Fifo => Self::Fifo,
            FileType::Socket => Self::Socket,
            FileType::CharacterDevice => Self::CharDevice,
            FileType::BlockDevice => Self::BlockDevice,
            FileType::Unknown => Self::Unknown,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Regular => "a regular file",
            Self::Directory => "a directory",
            Self::Symlink => "a symbolic link",
            Self::Fifo => "a FIFO",
            Self::Socket => "a socket",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
            Self::Unknown => "a file of unknown type",
        })
    }
}

/// How a node is opened for I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Why an operation on an opened node failed. Messages name the node path; host
/// functions phrase their own with the path the guest gave.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{} is {found}", node.display())]
    WrongKind { node: PathBuf, found: FileKind },
    #[error("{} is larger than {limit} bytes", node.display())]
    TooLarge { node: PathBuf, limit: u64 },
    #[error("{}: {source}", node.display())]
    Io {
        node: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl NodeError {
    /// What went wrong, without the node path: host functions name the path the guest
    /// gave instead.
    pub fn reason(&self) -> String {
        match self {
            Self::WrongKind { found, .. } => format!("is {found}"),
            Self::TooLarge { limit, .. } => format!("is larger than {limit} bytes"),
            Self::Io { source, .. } => source.to_string(),
        }
    }
}

impl NodeFile {
    pub(super) fn new(
        fd: OwnedFd,
        node: PathBuf,
        host: PathBuf,
        root: Arc<Root>,
        via_proc: bool,
    ) -> Self {
        Self {
            fd,
            node,
            host,
            root,
            via_proc,
        }
    }

    /// Canonical node path, e.g. `/sys/devices/pci0000:15/.../0000:18:00.0/vendor`.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// The same file's path on the host (under the host root), for messages and for
    /// code that hands paths on (CDI specs).
    pub fn host(&self) -> &Path {
        &self.host
    }

    pub fn resolved(&self) -> Resolved {
        Resolved {
            host: self.host.clone(),
            node: self.node.clone(),
        }
    }

    /// `fstat` of the node itself (of the link, for a node opened without following it).
    pub fn stat(&self) -> Result<Stat, NodeError> {
        rustix::fs::fstat(&self.fd).map_err(|e| self.io(e.into()))
    }

    pub fn kind(&self) -> Result<FileKind, NodeError> {
        self.stat().map(|stat| FileKind::of(&stat))
    }

    /// Opens a regular file for I/O; anything else (a FIFO that would block, a device
    /// whose `open` acts, a socket) is refused before it is opened.
    pub fn open(&self, access: Access) -> Result<File, NodeError> {
        self.expect(FileKind::Regular)?;
        self.reopen(access)
    }

    /// Reads a whole regular file of at most `limit` bytes. sysfs reports a size of 4096
    /// for every attribute, so the limit applies to what is read, not to the metadata.
    pub fn read(&self, limit: u64) -> Result<Vec<u8>, NodeError> {
        use std::io::Read;
        let mut bytes = Vec::new();
        self.open(Access::Read)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(e))?;
        if bytes.len() as u64 > limit {
            return Err(NodeError::TooLarge {
                node: self.node.clone(),
                limit,
            });
        }
        Ok(bytes)
    }

    /// Opens the node for I/O whatever its kind (the caller has checked it: `/dev/kmsg`
    /// is a character device), non-blocking and never as a controlling terminal.
    pub fn reopen(&self, access: Access) -> Result<File, NodeError> {
        let flags = match access {
            Access::Read => OFlags::RDONLY,
            Access::Write => OFlags::WRONLY,
        } | OFlags::NONBLOCK
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        let fd = if self.via_proc {
            let magic = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
            rustix::fs::open(magic.as_str(), flags, Mode::empty()).map_err(|e| self.io(e.into()))?
        } else {
            let fd = rustix::fs::openat(
                &self.root.fd,
                relative(&self.node),
                flags | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .map_err(|e| self.io(e.into()))?;
            let (checked, opened) = (self.stat()?, rustix::fs::fstat(&fd));
            let opened = opened.map_err(|e| self.io(e.into()))?;
            if (checked.st_dev, checked.st_ino) != (opened.st_dev, opened.st_ino) {
                return Err(self.io(io::Error::other(
                    "the file was replaced while it was being opened",
                )));
            }
            fd
        };
        Ok(File::from(fd))
    }

    /// The names in a directory, without `.` and `..`, in the order the kernel gives.
    pub fn entries(&self) -> Result<Entries, NodeError> {
        self.expect(FileKind::Directory)?;
        let fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io(e.into()))?;
        let dir = Dir::new(fd).map_err(|e| self.io(e.into()))?;
        Ok(Entries {
            dir,
            node: self.node.clone(),
        })
    }

    /// The target of a node opened without following it.
    pub fn read_link(&self) -> Result<PathBuf, NodeError> {
        self.expect(FileKind::Symlink)?;
        rustix::fs::readlinkat(&self.fd, "", Vec::new())
            .map(|target| PathBuf::from(OsString::from_vec(target.into_bytes())))
            .map_err(|e| self.io(e.into()))
    }

    /// The entry `name` of this directory, opened without following it: sysfs
    /// attributes are plain names in a device's directory, read relative to it.
    pub fn child(&self, name: &str) -> Result<NodeFile, NodeError> {
        self.check_name(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io(e.into()))?;
        Ok(NodeFile {
            fd,
            node: self.node.join(name),
            host: self.host.join(name),
            root: self.root.clone(),
            via_proc: self.via_proc,
        })
    }

    /// The target of the link `name` in this directory (`driver`, `iommu_group`).
    pub fn child_link(&self, name: &str) -> Result<PathBuf, NodeError> {
        self.check_name(name)?;
        rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .map(|target| PathBuf::from(OsString::from_vec(target.into_bytes())))
            .map_err(|e| self.io(e.into()))
    }

    fn check_name(&self, name: &str) -> Result<(), NodeError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(self.io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not one directory entry's name"),
            )));
        }
        Ok(())
    }

    fn expect(&self, wanted: FileKind) -> Result<Stat, NodeError> {
        let stat = self.stat()?;
        match FileKind::of(&stat) {
            found if found == wanted => Ok(stat),
            found => Err(NodeError::WrongKind {
                node: self.node.clone(),
                found,
            }),
        }
    }

    fn io(&self, source: io::Error) -> NodeError {
        NodeError::Io {
            node: self.node.clone(),
            source,
        }
    }
}

impl AsFd for NodeFile {
    /// The `O_PATH` descriptor: a directory's serves as `dirfd` for `*at` calls.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The entries of a directory node (see [`NodeFile::entries`]).
pub struct Entries {
    dir: Dir,
    node: PathBuf,
}

impl Iterator for Entries {
    type Item = Result<OsString, NodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.dir.read()? {
                Ok(entry) => entry,
                Err(e) => {
                    return Some(Err(NodeError::Io {
                        node: self.node.clone(),
                        source: e.into(),
                    }));
                }
            };
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                return Some(Ok(OsString::from_vec(name.to_vec())));
            }
        }
    }
}

/// Writes through a temporary file of a fresh random name in `dir`, then renames it
/// into place: the runtime never reads half a spec, and two writers never touch each
/// other's temporary files (a name that exists is never reused or removed). Both are
/// names in `dir`, never followed through a link.
pub fn write_atomically(dir: &NodeFile, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, mut file) = temporary_in(dir)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    let renamed = written.and_then(|()| {
        rustix::fs::renameat(dir, tmp.as_str(), dir, name).map_err(std::io::Error::from)
    });
    if renamed.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    renamed
}

/// A new file `.wdp-<random>.tmp` in `dir`, created exclusively.
fn temporary_in(dir: &NodeFile) -> std::io::Result<(String, std::fs::File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..16 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let name = format!(".wdp-{:016x}.tmp", hasher.finish());
        match rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => return Ok((name, std::fs::File::from(fd))),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

#[cfg(test)]
mod tests {
    use super::super::resolver::Resolver;
    use super::*;

    fn tree() -> (tempfile::TempDir, Resolver) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/d")).unwrap();
        std::fs::write(dir.path().join("sys/d/attr"), "old").unwrap();
        std::os::unix::fs::symlink("attr", dir.path().join("sys/d/link")).unwrap();
        let r = Resolver::new(dir.path(), vec![PathBuf::from("/sys")]);
        (dir, r)
    }

    /// What was checked is what is read: through /proc/self/fd the open reaches the very
    /// inode the resolver opened, even after a rename replaced the name; the fallback,
    /// which opens the name again, notices that it is another file.
    #[test]
    fn io_reaches_the_checked_file_or_fails() {
        let (dir, r) = tree();
        let checked = r.open("/sys/d/attr").unwrap();
        let walked = r.clone().force_fallback().open("/sys/d/attr").unwrap();
        std::fs::write(dir.path().join("sys/d/new"), "new").unwrap();
        std::fs::rename(dir.path().join("sys/d/new"), dir.path().join("sys/d/attr")).unwrap();
        assert_eq!(checked.read(100).unwrap(), b"old");
        let got = walked.read(100);
        assert!(
            matches!(&got, Err(NodeError::Io { source, .. }) if source.to_string().contains("replaced")),
            "{got:?}"
        );
    }

    #[test]
    fn children_are_single_names_never_followed() {
        let (_dir, r) = tree();
        for r in [r.clone(), r.force_fallback()] {
            let dir = r.open("/sys/d").unwrap();
            assert_eq!(dir.child("attr").unwrap().read(100).unwrap(), b"old");
            assert_eq!(dir.child_link("link").unwrap(), Path::new("attr"));
            assert_eq!(
                dir.child("link").unwrap().kind().unwrap(),
                FileKind::Symlink
            );
            for bad in ["", ".", "..", "a/b", "../d"] {
                assert!(dir.child(bad).is_err(), "{bad:?}");
            }
            let mut names: Vec<_> = dir.entries().unwrap().map(Result::unwrap).collect();
            names.sort();
            assert_eq!(names, ["attr", "link"]);
            let got = dir.child("attr").unwrap().read(2);
            assert!(
                matches!(got, Err(NodeError::TooLarge { limit: 2, .. })),
                "{got:?}"
            );
        }
    }
}
