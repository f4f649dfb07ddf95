//! File-system primitives for the simulated tree: node paths mapped under the root,
//! relative symbolic links computed like the kernel's, and writes a concurrently reading
//! host never sees half-done.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The root of a simulated node and its staging area for atomic replacements.
///
/// Staged files and directories are built under `<root>/.staging/` (outside `/sys`,
/// `/proc` and `/dev`, so a reader listing a directory never sees a temporary name) and
/// renamed into place; `rename(2)` on one file system is atomic.
#[derive(Debug)]
pub(crate) struct Tree {
    root: PathBuf,
    staged: AtomicU64,
}

impl Tree {
    pub(crate) fn new(root: &Path) -> io::Result<Tree> {
        let tree = Tree {
            root: root.to_path_buf(),
            staged: AtomicU64::new(0),
        };
        fs::create_dir_all(tree.staging_dir())?;
        Ok(tree)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(".staging")
    }

    /// A fresh, unused path in the staging area.
    pub(crate) fn staging_path(&self) -> PathBuf {
        let n = self.staged.fetch_add(1, Ordering::Relaxed);
        self.staging_dir()
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Maps a node path (`/sys/...`) to its place under the root.
    pub(crate) fn path(&self, node_path: &str) -> PathBuf {
        self.root.join(node_path.trim_start_matches('/'))
    }

    pub(crate) fn mkdir(&self, node_path: &str) -> io::Result<()> {
        fs::create_dir_all(self.path(node_path))
    }

    /// Writes a whole file atomically, creating its parent directories.
    pub(crate) fn write(&self, node_path: &str, contents: &str) -> io::Result<()> {
        let target = self.path(node_path);
        create_parent(&target)?;
        let staged = self.staging_path();
        fs::write(&staged, contents)?;
        fs::rename(&staged, &target)
    }

    /// Creates (or atomically replaces) a symbolic link at `link` pointing at the node
    /// path `target`, stored relative to the link's directory as sysfs stores them.
    pub(crate) fn link(&self, link: &str, target: &str) -> io::Result<()> {
        let path = self.path(link);
        create_parent(&path)?;
        let staged = self.staging_path();
        symlink(relative(parent(link), target), &staged)?;
        fs::rename(&staged, &path)
    }

    /// Removes a file or link; a missing one is already removed.
    pub(crate) fn remove_file(&self, node_path: &str) -> io::Result<()> {
        match fs::remove_file(self.path(node_path)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Removes a directory tree in one step for readers: it is first renamed out of the
    /// tree, then deleted. A missing directory is already removed.
    pub(crate) fn remove_dir(&self, node_path: &str) -> io::Result<()> {
        let staged = self.staging_path();
        match fs::rename(self.path(node_path), &staged) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(()) => fs::remove_dir_all(&staged),
        }
    }

    /// Moves a directory built in the staging area to `node_path` in one step.
    pub(crate) fn install_dir(&self, staged: &Path, node_path: &str) -> io::Result<()> {
        let target = self.path(node_path);
        create_parent(&target)?;
        fs::rename(staged, target)
    }
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => fs::create_dir_all(dir),
        None => Ok(()),
    }
}

/// The directory part of a node path (`/sys/a/b` → `/sys/a`).
pub(crate) fn parent(node_path: &str) -> &str {
    match node_path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &node_path[..i],
    }
}

/// The path from directory `from` to `to`, both absolute node paths without `.` or `..`,
/// built the way sysfs builds link targets: up to the closest common ancestor of `from`
/// and `to`'s parent, then down (so a link to an ancestor still names it, e.g.
/// `device -> ../../../0000:19:00.0`).
pub(crate) fn relative(from: &str, to: &str) -> PathBuf {
    let names = |p: &str| -> Vec<String> {
        Path::new(p)
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let (from, to) = (names(from), names(to));
    let common = from
        .iter()
        .zip(&to[..to.len().saturating_sub(1)])
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for name in &to[common..] {
        rel.push(name);
    }
    rel
}
