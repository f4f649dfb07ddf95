//! The guests directory: which guests are there, and whether any of their files changed.
//!
//! Operators mount it from a ConfigMap, which the kubelet updates by swapping a `..data`
//! symlink: every key is a link through `..data`, so a change shows up as a different
//! file (inode, size, time) behind the same name. A guest is its `<name>.wasm` plus the
//! optional files beside it: `<name>.policy.json`, `<name>.json` (or `.yaml`, `.yml`,
//! `.conf`) and `<name>.wasm.sig`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::NodeError;
use crate::policy::policy_path;
use crate::runtime::signature::signature_path;

/// Extensions of the optional configuration file beside `<name>.wasm`.
pub const CONFIG_EXTENSIONS: [&str; 4] = ["json", "yaml", "yml", "conf"];

/// Identity of one file as the host last saw it: absent, or (device, inode, size, mtime).
type FileState = Option<(u64, u64, u64, i64, i64)>;

/// What a guest's files were when it was last loaded; any difference means a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<FileState>);

/// One guest found in the directory.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    pub name: String,
    pub wasm: PathBuf,
    pub fingerprint: Fingerprint,
}

/// The guests in `dir`, by name. Hidden entries (`..data`, timestamped directories) are
/// skipped; links are followed; names that are not UTF-8 are left out.
pub fn scan(dir: &Path) -> Result<Vec<GuestFiles>, NodeError> {
    let entries = std::fs::read_dir(dir).map_err(|source| NodeError::GuestsDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut guests: Vec<GuestFiles> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .filter_map(|wasm| {
            let name = wasm.file_stem()?.to_str()?.to_owned();
            (!name.starts_with('.')).then(|| GuestFiles {
                fingerprint: fingerprint(&wasm),
                name,
                wasm,
            })
        })
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(guests)
}

fn fingerprint(wasm: &Path) -> Fingerprint {
    let mut files = vec![wasm.to_owned(), policy_path(wasm), signature_path(wasm)];
    files.extend(CONFIG_EXTENSIONS.iter().map(|ext| wasm.with_extension(ext)));
    Fingerprint(
        files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
            })
            .collect(),
    )
}

/// The operator's configuration for `guest.wasm`: the text of `guest.json`,
/// `guest.yaml`, `guest.yml` or `guest.conf`, or empty when there is none.
pub fn read_config(wasm: &Path) -> Result<String, String> {
    let found: Vec<PathBuf> = CONFIG_EXTENSIONS
        .iter()
        .map(|ext| wasm.with_extension(ext))
        .filter(|p| p.is_file())
        .collect();
    match found.as_slice() {
        [] => Ok(String::new()),
        [one] => std::fs::read_to_string(one).map_err(|e| {
            format!(
                "{}: cannot read the guest's configuration: {e}",
                one.display()
            )
        }),
        many => Err(format!(
            "{}: several configuration files ({}); keep one",
            wasm.display(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_guests_and_notices_configmap_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A ConfigMap volume: keys are links through ..data to a timestamped directory.
        std::fs::create_dir(root.join("..2026_11_27_1")).unwrap();
        std::fs::write(root.join("..2026_11_27_1/a.wasm"), "v1").unwrap();
        std::os::unix::fs::symlink("..2026_11_27_1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.wasm", root.join("a.wasm")).unwrap();
        std::fs::write(root.join("notes.txt"), "").unwrap();

        let first = scan(root).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name, "a");

        std::fs::create_dir(root.join("..2026_11_27_2")).unwrap();
        std::fs::write(root.join("..2026_11_27_2/a.wasm"), "v2").unwrap();
        std::os::unix::fs::symlink("..2026_11_27_2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        let second = scan(root).unwrap();
        assert_ne!(
            first[0].fingerprint, second[0].fingerprint,
            "the swap is a change"
        );
        assert_eq!(
            scan(root).unwrap()[0].fingerprint,
            second[0].fingerprint,
            "no change, same print"
        );
    }

    #[test]
    fn one_config_file_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("g.wasm");
        assert_eq!(read_config(&wasm).unwrap(), "");
        std::fs::write(dir.path().join("g.json"), "{}").unwrap();
        assert_eq!(read_config(&wasm).unwrap(), "{}");
        std::fs::write(dir.path().join("g.yaml"), "a: 1").unwrap();
        assert!(read_config(&wasm).unwrap_err().contains("several"));
    }
}
