//! `devfs` interface: look up device nodes under `/dev`.

use super::NodeAccess;
use crate::handout::DeviceNodes;
use crate::host_root::node_file::FileKind;
use crate::wit::latest::devfs::Host;
use crate::wit::latest::types::{DevNode, Error as WitError, NodeKind};

impl Host for NodeAccess {
    fn lookup(&mut self, path: String) -> Result<Option<DevNode>, WitError> {
        if !(path == "/dev" || path.starts_with("/dev/")) {
            return Err(WitError::InvalidArgument(format!(
                "{path} is not under /dev; devfs looks up device nodes only"
            )));
        }
        // Opened O_PATH: the device's driver never sees an `open`.
        let node = match self.resolver().open(&path) {
            Ok(node) => node,
            Err(crate::host_root::resolver::ResolveError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stat = node
            .stat()
            .map_err(|e| WitError::Io(format!("cannot stat {path}: {}", e.reason())))?;
        let (kind, rdev) = match FileKind::of(&stat) {
            FileKind::CharDevice => (NodeKind::Char, stat.st_rdev),
            FileKind::BlockDevice => (NodeKind::Block, stat.st_rdev),
            // Fixture trees stand a plain file in for a node (creating real nodes needs
            // root); on a real node a plain file is no device node.
            FileKind::Regular if self.node_root().device_nodes == DeviceNodes::Simulated => {
                (NodeKind::Char, 0)
            }
            found => {
                return Err(WitError::InvalidArgument(format!(
                    "{path} is {found}, not a device node"
                )));
            }
        };
        Ok(Some(DevNode {
            path: node.node().display().to_string(),
            kind,
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_real_and_fixture_nodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        let mut fixture =
            crate::hostfns::testing::reader(dir.path()).with_device_nodes(DeviceNodes::Simulated);
        let node = fixture.lookup("/dev/nvidia0".into()).unwrap().unwrap();
        assert_eq!(
            (node.path.as_str(), node.kind, node.major, node.minor),
            ("/dev/nvidia0", NodeKind::Char, 0, 0)
        );
        let mut strict = crate::hostfns::testing::reader(dir.path());
        assert!(
            matches!(
                strict.lookup("/dev/nvidia0".into()),
                Err(WitError::InvalidArgument(_))
            ),
            "on a real node a plain file is no device node"
        );
        assert!(fixture.lookup("/dev/nvidia9".into()).unwrap().is_none());
        assert!(matches!(
            fixture.lookup("/sys/x".into()),
            Err(WitError::InvalidArgument(_))
        ));

        // The real /dev/null is char 1:3 on every Linux machine.
        let mut real = crate::hostfns::testing::reader(std::path::Path::new("/"));
        let null = real.lookup("/dev/null".into()).unwrap().unwrap();
        assert_eq!((null.kind, null.major, null.minor), (NodeKind::Char, 1, 3));
    }

    /// The kernel's encoding of device numbers (glibc's `makedev`), decoded by rustix
    /// the same way on every architecture.
    #[test]
    fn major_minor_match_glibc() {
        let dev: u64 = ((195u64 & 0xfff) << 8) | (255u64 & 0xff);
        assert_eq!((rustix::fs::major(dev), rustix::fs::minor(dev)), (195, 255));
        let (ma, mi) = (5000u64, 70000u64);
        let big = ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12);
        assert_eq!(
            (rustix::fs::major(big), rustix::fs::minor(big)),
            (5000, 70000)
        );
    }

    #[test]
    fn fifos_are_not_device_nodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("dev/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let mut fixture = crate::hostfns::testing::reader(dir.path());
        let got = fixture.lookup("/dev/fifo".into());
        assert!(
            matches!(&got, Err(WitError::InvalidArgument(m)) if m.contains("a FIFO")),
            "{got:?}"
        );
    }
}
