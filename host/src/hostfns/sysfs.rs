//! `sysfs` interface: read files, list directories and read links under /sys and /proc.
//!
//! Every call opens the guest's path in one step through the resolver and works on that
//! descriptor. A file is opened for I/O only once it is known to be a regular file, and
//! then non-blocking, so a FIFO, a socket or a device node under a granted path can
//! neither block the guest's thread nor act on being opened.

use std::io::Write;
use std::path::Path;

use super::NodeAccess;
use crate::grant::Grant;
use crate::host_root::node_file::{Access, FileKind, NodeError, NodeFile};
use crate::wit::latest::sysfs::Host;
use crate::wit::latest::types::Error as WitError;

/// Largest file a guest may read in one call. sysfs attributes are at most a page;
/// procfs tables such as `/proc/devices` are a few KiB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Largest write to a sysfs attribute (a page).
pub const MAX_WRITE_BYTES: usize = 4096;
/// Most entries one `list-dir` returns (a large node has a few hundred PCI functions).
pub const MAX_DIR_ENTRIES: usize = 16 * 1024;
/// The kernel's device tree: every device link in /sys/bus and /sys/class leads here.
const DEVICE_TREE: &str = "/sys/devices";

/// Whatever the grant says, this interface reads only the kernel's pseudo-filesystems:
/// opening a node under `/dev` (`/dev/mem`, a disk) is never a "sysfs read".
fn pseudo_fs(path: &str, file: &NodeFile) -> Result<(), WitError> {
    let node = file.node();
    if node.starts_with("/sys") || node.starts_with("/proc") {
        Ok(())
    } else {
        Err(WitError::Denied(format!(
            "{path} resolves to {}; sysfs reads only /sys and /proc",
            node.display()
        )))
    }
}

/// A failed operation on an opened node, phrased with the path the guest gave: `doing`
/// says what failed, `only` what the call accepts when the node is of the wrong kind.
fn node_error(path: &str, doing: &str, only: &str, e: NodeError) -> WitError {
    match e {
        NodeError::WrongKind { found, .. } => {
            WitError::InvalidArgument(format!("{path} is {found}; {only}"))
        }
        NodeError::TooLarge { limit, .. } => WitError::Io(format!(
            "{path} is larger than {limit} bytes; read a smaller attribute"
        )),
        NodeError::Io { source, .. } => WitError::Io(format!("{doing} {path}: {source}")),
    }
}

/// A write must land where a write pattern points: the resolved attribute matches a
/// pattern itself, or it is the very attribute the guest named (same name; the last
/// component was not followed) at its canonical place in the device tree, where
/// `/sys/bus/pci/devices/*/reset` leads. A link that redirects a granted name anywhere
/// else in /sys (another subsystem, a driver's `bind`) is refused.
fn lands_where_granted(grant: &Grant, named: &str, resolved: &Path) -> bool {
    if resolved.to_str().is_some_and(|r| grant.allows_write(r)) {
        return true;
    }
    resolved.starts_with(DEVICE_TREE) && resolved.file_name() == Path::new(named).file_name()
}

impl Host for NodeAccess {
    fn read_file(&mut self, path: String) -> Result<String, WitError> {
        const ONLY: &str = "read-file reads regular files only";
        let file = self.resolver().open(&path)?;
        // Checked on the O_PATH descriptor, before anything is opened for reading.
        match file.kind() {
            Ok(FileKind::Regular) => {}
            Ok(found) => {
                return Err(WitError::InvalidArgument(format!(
                    "{path} is {found}; {ONLY}"
                )));
            }
            Err(e) => return Err(node_error(&path, "cannot open", ONLY, e)),
        }
        pseudo_fs(&path, &file)?;
        let bytes = file
            .read(MAX_FILE_BYTES)
            .map_err(|e| node_error(&path, "cannot read", ONLY, e))?;
        String::from_utf8(bytes).map_err(|_| WitError::Io(format!("{path} is not UTF-8 text")))
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<String>, WitError> {
        const ONLY: &str = "list-dir lists directories only";
        let dir = self.resolver().open(&path)?;
        pseudo_fs(&path, &dir)?;
        let entries = dir
            .entries()
            .map_err(|e| node_error(&path, "cannot list", ONLY, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| node_error(&path, "cannot list", ONLY, e))?;
            if names.len() == MAX_DIR_ENTRIES {
                return Err(WitError::Io(format!(
                    "{path} has more than {MAX_DIR_ENTRIES} entries"
                )));
            }
            // Names that are not UTF-8 cannot be named back through the WIT API; skip them.
            if let Ok(name) = name.into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn write_file(&mut self, path: String, content: String) -> Result<(), WitError> {
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
        // Resolved without the read grant (the write grant names the attribute), and
        // without following a link in the last component: the attribute itself.
        let attribute = self
            .resolver()
            .with_grant(vec!["/sys".into()])
            .open_nofollow(&path)?;
        if !lands_where_granted(self.grant(), &path, attribute.node()) {
            return Err(WitError::Denied(format!(
                "{path} resolves to {}, which no write grant of guest {} names",
                attribute.node().display(),
                self.guest()
            )));
        }
        let mut file = attribute.open(Access::Write).map_err(|e| {
            node_error(
                &path,
                "cannot open for writing",
                "write-file writes regular attributes only",
                e,
            )
        })?;
        file.write_all(content.as_bytes())
            .map_err(|e| WitError::Io(format!("writing {path} failed: {e}")))?;
        tracing::info!(guest = self.guest(), path, "sysfs attribute written");
        Ok(())
    }

    fn read_link(&mut self, path: String) -> Result<String, WitError> {
        let link = self.resolver().open_nofollow(&path)?;
        pseudo_fs(&path, &link)?;
        let target = link.read_link().map_err(|e| {
            node_error(
                &path,
                "cannot read the link",
                "read-link reads symbolic links only",
                e,
            )
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
    use crate::hostfns::testing;
    use rustix::fs::{FileType, Mode};
    use std::time::Duration;

    /// The same access as this kernel runs it (`openat2`) and as an older one would.
    fn both(access: NodeAccess) -> [(&'static str, NodeAccess); 2] {
        [
            ("openat2", access.clone()),
            ("walk", testing::fallback(access)),
        ]
    }

    /// Runs `call` on a thread and fails if it has not returned within 10 s: a host
    /// function that opened a FIFO for I/O would block there for good.
    fn within_10s<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(call());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the host function blocked")
    }

    fn mkfifo(path: &std::path::Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

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
        let (_d, a) = access();
        for (mode, mut a) in both(a) {
            assert_eq!(
                a.read_file("/sys/class/x/a".into()).unwrap(),
                "one\n",
                "{mode}"
            );
            assert_eq!(
                a.list_dir("/sys/class/x".into()).unwrap(),
                vec!["a", "b"],
                "{mode}"
            );
            assert_eq!(
                a.read_link("/sys/class/link".into()).unwrap(),
                "../class/x",
                "{mode}"
            );
            assert_eq!(
                a.read_file("/sys/class/link/b".into()).unwrap(),
                "two\n",
                "{mode}"
            );
        }
    }

    #[test]
    fn fifos_sockets_and_directories_are_refused_without_blocking() {
        let (d, a) = access();
        mkfifo(&d.path().join("sys/class/x/fifo"));
        let _socket =
            std::os::unix::net::UnixListener::bind(d.path().join("sys/class/x/socket")).unwrap();
        std::os::unix::fs::symlink("fifo", d.path().join("sys/class/x/to-fifo")).unwrap();
        for (mode, a) in both(a) {
            for (path, kind) in [
                ("/sys/class/x/fifo", "is a FIFO"),
                ("/sys/class/x/to-fifo", "is a FIFO"),
                ("/sys/class/x/socket", "is a socket"),
                ("/sys/class/x", "is a directory"),
            ] {
                let mut a = a.clone();
                let got = within_10s(move || a.read_file(path.into()));
                assert!(
                    matches!(&got, Err(WitError::InvalidArgument(m))
                        if m.contains(kind) && m.contains("read-file reads regular files only")),
                    "{mode} {path}: {got:?}"
                );
            }
            let mut b = a.clone();
            let got = within_10s(move || b.list_dir("/sys/class/x/fifo".into()));
            assert!(
                matches!(&got, Err(WitError::InvalidArgument(m)) if m.contains("is a FIFO")),
                "{mode}: {got:?}"
            );
            let mut c = a.clone();
            let got = within_10s(move || c.read_link("/sys/class/x/fifo".into()));
            assert!(
                matches!(&got, Err(WitError::InvalidArgument(_))),
                "{mode}: {got:?}"
            );
        }
    }

    /// The real /dev/null under the host root `/`: a character device is refused before
    /// it is opened (a device's `open` may act: `/dev/watchdog` arms a timer).
    #[test]
    fn character_devices_are_refused_by_read_file() {
        for (mode, mut a) in both(testing::reader(std::path::Path::new("/"))) {
            let got = within_10s(move || a.read_file("/dev/null".into()));
            assert!(
                matches!(&got, Err(WitError::InvalidArgument(m))
                    if m.contains("is a character device; read-file reads regular files only")),
                "{mode}: {got:?}"
            );
        }
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
        let a = NodeAccess::new("t", dir.path(), std::sync::Arc::new(grant), "/var/run/cdi");
        for (mode, mut a) in both(a) {
            std::fs::write(dev.join("reset"), "").unwrap();
            a.write_file("/sys/bus/pci/devices/0000:18:00.0/reset".into(), "1".into())
                .unwrap();
            assert_eq!(
                std::fs::read_to_string(dev.join("reset")).unwrap(),
                "1",
                "{mode}"
            );
            for denied in [
                "/sys/bus/pci/devices/0000:18:00.0/remove",
                "/sys/bus/pci/devices/0000:18:00.0/../0000:18:00.0/reset",
                "/sys/devices/pci0000:15/0000:18:00.0/reset",
            ] {
                let result = a.write_file(denied.into(), "1".into());
                assert!(
                    matches!(result, Err(WitError::Denied(_))),
                    "{mode} {denied}: {result:?}"
                );
            }
            let missing =
                a.write_file("/sys/bus/pci/devices/0000:99:00.0/reset".into(), "1".into());
            assert!(
                matches!(missing, Err(WitError::NotFound(_))),
                "{mode} {missing:?}"
            );
        }
    }

    /// A name the write grant matches must also land where it points: not, through a
    /// link, on another subsystem's file, on another attribute, or on a FIFO.
    #[test]
    fn writes_land_only_where_the_grant_points() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let devices = sys.join("devices/pci0000:15");
        for d in ["0000:18:00.0", "0000:1a:00.0", "0000:1b:00.0"] {
            std::fs::create_dir_all(devices.join(d)).unwrap();
            std::fs::write(devices.join(d).join("remove"), "").unwrap();
        }
        std::fs::write(devices.join("0000:18:00.0/reset"), "").unwrap();
        symlink("remove", devices.join("0000:1a:00.0/reset")).unwrap();
        mkfifo(&devices.join("0000:1b:00.0/reset"));
        std::fs::create_dir_all(sys.join("class/evil")).unwrap();
        std::fs::write(sys.join("class/evil/reset"), "").unwrap();
        std::fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        for (name, target) in [
            ("0000:18:00.0", "../../../devices/pci0000:15/0000:18:00.0"),
            ("0000:19:00.0", "../../../class/evil"),
            ("0000:1a:00.0", "../../../devices/pci0000:15/0000:1a:00.0"),
            ("0000:1b:00.0", "../../../devices/pci0000:15/0000:1b:00.0"),
        ] {
            symlink(target, sys.join("bus/pci/devices").join(name)).unwrap();
        }
        let grant = crate::grant::Grant {
            write_patterns: vec!["/sys/bus/pci/devices/*/reset".into()],
            ..crate::grant::Grant::none()
        };
        let a = NodeAccess::new("t", dir.path(), std::sync::Arc::new(grant), "/var/run/cdi");
        for (mode, a) in both(a) {
            let write = |device: &str| {
                let mut a = a.clone();
                let path = format!("/sys/bus/pci/devices/{device}/reset");
                within_10s(move || a.write_file(path, "1".into()))
            };
            assert!(write("0000:18:00.0").is_ok(), "{mode}");
            let got = write("0000:19:00.0");
            assert!(
                matches!(&got, Err(WitError::Denied(m)) if m.contains("/sys/class/evil/reset")),
                "{mode}: {got:?}"
            );
            let got = write("0000:1a:00.0");
            assert!(
                matches!(&got, Err(WitError::InvalidArgument(m)) if m.contains("symbolic link")),
                "{mode}: {got:?}"
            );
            let got = write("0000:1b:00.0");
            assert!(
                matches!(&got, Err(WitError::InvalidArgument(m)) if m.contains("FIFO")),
                "{mode}: {got:?}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(sys.join("class/evil/reset")).unwrap(),
            ""
        );
        assert_eq!(
            std::fs::read_to_string(devices.join("0000:1a:00.0/remove")).unwrap(),
            ""
        );
    }
}
