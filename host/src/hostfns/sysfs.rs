//! `sysfs` interface: read files, list directories and read links under /sys and /proc.

use std::io::Read;

use super::NodeAccess;
use super::resolver::Resolved;
use crate::wit::latest::sysfs::Host;
use crate::wit::latest::types::Error as WitError;

/// Largest file a guest may read in one call. sysfs attributes are at most a page;
/// procfs tables such as `/proc/devices` are a few KiB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Largest write to a sysfs attribute (a page).
pub const MAX_WRITE_BYTES: usize = 4096;
/// `O_NOFOLLOW` on Linux: the attribute itself must not be a link.
const O_NOFOLLOW: i32 = 0o400000;
/// Most entries one `list-dir` returns (a large node has a few hundred PCI functions).
pub const MAX_DIR_ENTRIES: usize = 16 * 1024;

/// Whatever the grant says, this interface reads only the kernel's pseudo-filesystems:
/// opening a node under `/dev` (`/dev/mem`, a disk) is never a "sysfs read".
fn pseudo_fs(path: &str, resolved: &Resolved) -> Result<(), WitError> {
    if resolved.node.starts_with("/sys") || resolved.node.starts_with("/proc") {
        Ok(())
    } else {
        Err(WitError::Denied(format!(
            "{path} resolves to {}; sysfs reads only /sys and /proc",
            resolved.node.display()
        )))
    }
}

impl Host for NodeAccess {
    fn read_file(&mut self, path: String) -> Result<String, WitError> {
        let resolved = self.resolver().resolve(&path)?;
        pseudo_fs(&path, &resolved)?;
        let file = std::fs::File::open(&resolved.host)
            .map_err(|e| WitError::Io(format!("cannot open {path}: {e}")))?;
        let mut bytes = Vec::new();
        // sysfs reports a size of 4096 for every attribute, so the limit is applied to
        // what is actually read rather than to the metadata.
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| WitError::Io(format!("cannot read {path}: {e}")))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(WitError::Io(format!(
                "{path} is larger than {MAX_FILE_BYTES} bytes; read a smaller attribute"
            )));
        }
        String::from_utf8(bytes).map_err(|_| WitError::Io(format!("{path} is not UTF-8 text")))
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<String>, WitError> {
        let resolved = self.resolver().resolve(&path)?;
        pseudo_fs(&path, &resolved)?;
        let entries = std::fs::read_dir(&resolved.host)
            .map_err(|e| WitError::Io(format!("cannot list {path}: {e}")))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| WitError::Io(format!("cannot list {path}: {e}")))?;
            if names.len() == MAX_DIR_ENTRIES {
                return Err(WitError::Io(format!(
                    "{path} has more than {MAX_DIR_ENTRIES} entries"
                )));
            }
            // Names that are not UTF-8 cannot be named back through the WIT API; skip them.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn write_file(&mut self, path: String, content: String) -> Result<(), WitError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let lexical_ok = !path.split('/').any(|c| c == ".." || c == ".");
        if !lexical_ok || !self.grant().allows_write(&path) {
            return Err(WitError::Denied(format!(
                "guest {} may not write {path}; grant it in the policy's write list",
                self.guest()
            )));
        }
        if content.len() > MAX_WRITE_BYTES {
            return Err(WitError::InvalidArgument(format!(
                "{} bytes for {path}; sysfs attributes take at most {MAX_WRITE_BYTES}",
                content.len()
            )));
        }
        // Resolved without the read grant: the write grant already names the attribute.
        let resolver =
            super::resolver::Resolver::new(self.resolver().host_root(), vec!["/sys".into()]);
        let resolved = resolver.resolve(&path)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NOFOLLOW)
            .open(&resolved.host)
            .map_err(|e| WitError::Io(format!("cannot open {path} for writing: {e}")))?;
        file.write_all(content.as_bytes())
            .map_err(|e| WitError::Io(format!("writing {path} failed: {e}")))?;
        tracing::info!(guest = self.guest(), path, "sysfs attribute written");
        Ok(())
    }

    fn read_link(&mut self, path: String) -> Result<String, WitError> {
        let resolved = self.resolver().resolve_nofollow(&path)?;
        pseudo_fs(&path, &resolved)?;
        let target = std::fs::read_link(&resolved.host).map_err(|e| {
            WitError::InvalidArgument(format!("{path} is not a symbolic link: {e}"))
        })?;
        target
            .into_os_string()
            .into_string()
            .map_err(|_| WitError::Io(format!("the target of {path} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> (tempfile::TempDir, NodeAccess) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/class/x")).unwrap();
        std::fs::write(dir.path().join("sys/class/x/b"), "two\n").unwrap();
        std::fs::write(dir.path().join("sys/class/x/a"), "one\n").unwrap();
        std::fs::write(dir.path().join("sys/big"), vec![b'a'; 70_000]).unwrap();
        std::fs::write(dir.path().join("sys/binary"), [0xff, 0xfe]).unwrap();
        std::os::unix::fs::symlink("../class/x", dir.path().join("sys/class/link")).unwrap();
        let access = crate::hostfns::testing::reader(dir.path());
        (dir, access)
    }

    #[test]
    fn reads_lists_and_links() {
        let (_d, mut a) = access();
        assert_eq!(a.read_file("/sys/class/x/a".into()).unwrap(), "one\n");
        assert_eq!(a.list_dir("/sys/class/x".into()).unwrap(), vec!["a", "b"]);
        assert_eq!(a.read_link("/sys/class/link".into()).unwrap(), "../class/x");
        assert_eq!(a.read_file("/sys/class/link/b".into()).unwrap(), "two\n");
    }

    #[test]
    fn oversized_binary_missing_and_ungranted_files_are_errors_not_traps() {
        let (_d, mut a) = access();
        assert!(matches!(
            a.read_file("/sys/big".into()),
            Err(WitError::Io(_))
        ));
        assert!(matches!(
            a.read_file("/sys/binary".into()),
            Err(WitError::Io(_))
        ));
        assert!(matches!(
            a.read_file("/sys/none".into()),
            Err(WitError::NotFound(_))
        ));
        assert!(matches!(
            a.read_file("/etc/passwd".into()),
            Err(WitError::Denied(_))
        ));
        assert!(matches!(
            a.read_link("/sys/class/x/a".into()),
            Err(WitError::InvalidArgument(_))
        ));
    }

    #[test]
    fn device_nodes_are_never_read_as_files() {
        let (d, mut a) = access();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/mem"), "secret").unwrap();
        assert!(matches!(
            a.read_file("/dev/mem".into()),
            Err(WitError::Denied(_))
        ));
        assert!(matches!(
            a.list_dir("/dev".into()),
            Err(WitError::Denied(_))
        ));
    }

    #[test]
    fn writes_need_a_matching_grant() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("sys/devices/pci0000:15/0000:18:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("reset"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("sys/bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:15/0000:18:00.0",
            dir.path().join("sys/bus/pci/devices/0000:18:00.0"),
        )
        .unwrap();
        let grant = crate::grant::Grant {
            write_patterns: vec!["/sys/bus/pci/devices/*/reset".into()],
            ..crate::grant::Grant::none()
        };
        let mut a = NodeAccess::new("t", dir.path(), std::sync::Arc::new(grant), "/var/run/cdi");
        a.write_file("/sys/bus/pci/devices/0000:18:00.0/reset".into(), "1".into())
            .unwrap();
        assert_eq!(std::fs::read_to_string(dev.join("reset")).unwrap(), "1");
        for denied in [
            "/sys/bus/pci/devices/0000:18:00.0/remove",
            "/sys/bus/pci/devices/0000:18:00.0/../0000:18:00.0/reset",
            "/sys/devices/pci0000:15/0000:18:00.0/reset",
        ] {
            let result = a.write_file(denied.into(), "1".into());
            assert!(
                matches!(result, Err(WitError::Denied(_))),
                "{denied}: {result:?}"
            );
        }
        let missing = a.write_file("/sys/bus/pci/devices/0000:99:00.0/reset".into(), "1".into());
        assert!(matches!(missing, Err(WitError::NotFound(_))), "{missing:?}");
    }
}
