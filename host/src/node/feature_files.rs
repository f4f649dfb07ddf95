//! Guests' node labels, published as Node Feature Discovery local feature files.
//!
//! NFD's worker reads every file in the node's `features.d` directory (`name=value` per
//! line, `#` for comments) and its master puts those labels on the Node object; GPU
//! Feature Discovery publishes the same way. One file per guest, `wdp-<guest>`, holding
//! only the labels [`crate::handout::node_labels`] accepted, written atomically and only
//! when its content changes. A guest that is removed takes its file with it; a host that
//! merely restarts leaves the file, so a rollout does not strip the node's labels.

use std::path::{Path, PathBuf};

use crate::handout::node_labels::Checked;
use crate::host_root::node_file::{NodeFile, write_atomically};
use crate::host_root::resolver::{ResolveError, Resolver};

/// Writes and removes one guest's feature file.
#[derive(Debug, Clone)]
pub struct FeatureFile {
    /// Node path of the `features.d` directory.
    dir: PathBuf,
    host_root: PathBuf,
    name: String,
    /// What the file last held, as written by this host (none: not written yet).
    written: Option<String>,
}

impl FeatureFile {
    pub fn new(host_root: &Path, dir: &Path, guest: &str) -> FeatureFile {
        FeatureFile {
            dir: dir.to_owned(),
            host_root: host_root.to_owned(),
            name: file_name(guest),
            written: None,
        }
    }

    /// The file's name in the directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `labels` (the file is removed when there are none). Returns whether the
    /// file changed.
    pub fn publish(&mut self, guest: &str, labels: &Checked) -> std::io::Result<bool> {
        let content = render(guest, labels);
        if self.written.as_deref() == Some(content.as_str()) {
            return Ok(false);
        }
        if labels.accepted.is_empty() {
            self.remove()?;
        } else {
            let dir = self.directory().map_err(std::io::Error::other)?;
            write_atomically(&dir, &self.name, content.as_bytes())?;
        }
        self.written = Some(content);
        Ok(true)
    }

    /// Removes the file (the guest is gone); nothing to do when there is none.
    pub fn remove(&mut self) -> std::io::Result<()> {
        self.written = None;
        let dir = match self.resolver().open(&self.dir_text()) {
            Ok(dir) => dir,
            Err(ResolveError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(std::io::Error::other(e)),
        };
        match rustix::fs::unlinkat(&dir, self.name.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The directory, opened under the host root like every node path (so a link in it
    /// stays under the root) and created when missing.
    fn directory(&self) -> Result<NodeFile, ResolveError> {
        self.resolver().create_dir_all(&self.dir_text())
    }

    fn resolver(&self) -> Resolver {
        Resolver::new(&self.host_root, vec![PathBuf::from("/")])
    }

    fn dir_text(&self) -> String {
        self.dir.display().to_string()
    }
}

/// `wdp-<guest>`: guest names are file stems of the guests directory, already limited
/// to a safe character set; anything else is replaced all the same.
fn file_name(guest: &str) -> String {
    let safe: String = guest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("wdp-{}", safe.trim_start_matches('.'))
}

/// The file's text: a comment naming the source, then `name=value` lines in name order.
fn render(guest: &str, labels: &Checked) -> String {
    let mut text = format!(
        "# Node labels published by wasm-device-plugin for guest {}; rewritten by the host.\n",
        file_name(guest).trim_start_matches("wdp-")
    );
    for (name, value) in &labels.accepted {
        text.push_str(name);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn checked(pairs: &[(&str, &str)]) -> Checked {
        Checked {
            accepted: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            refused: Vec::new(),
        }
    }

    #[test]
    fn writes_on_change_only_and_removes_when_empty() {
        let root = tempfile::tempdir().unwrap();
        let dir = Path::new("/etc/kubernetes/node-feature-discovery/features.d");
        let mut f = FeatureFile::new(root.path(), dir, "nvidia-gpu");
        let path = root
            .path()
            .join("etc/kubernetes/node-feature-discovery/features.d/wdp-nvidia-gpu");
        let labels = checked(&[
            ("nvidia.com/gpu.count", "8"),
            ("nvidia.com/gpu.family", "hopper"),
        ]);
        assert!(f.publish("nvidia-gpu", &labels).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("nvidia.com/gpu.count=8\nnvidia.com/gpu.family=hopper\n"),
            "{text}"
        );
        assert!(
            !f.publish("nvidia-gpu", &labels).unwrap(),
            "unchanged: not rewritten"
        );
        assert!(f.publish("nvidia-gpu", &checked(&[])).unwrap());
        assert!(!path.exists());
        f.remove().unwrap();
    }

    #[test]
    fn a_link_in_the_directory_path_stays_under_the_host_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc/kubernetes")).unwrap();
        let mut f = FeatureFile::new(root.path(), Path::new("/etc/kubernetes/features.d"), "g");
        // The absolute link resolves under the host root, where the target does not
        // exist: the directory is created there, never in `outside`.
        let _ = f.publish("g", &checked(&[("example.com/a", "1")]));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
