//! `devfs` interface: look up device nodes under `/dev`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::NodeAccess;
use crate::wit::latest::devfs::Host;
use crate::wit::latest::types::{DevNode, Error as WitError, NodeKind};

impl Host for NodeAccess {
    fn lookup(&mut self, path: String) -> Result<Option<DevNode>, WitError> {
        if !(path == "/dev" || path.starts_with("/dev/")) {
            return Err(WitError::InvalidArgument(format!(
                "{path} is not under /dev; devfs looks up device nodes only"
            )));
        }
        let resolved = match self.resolver().resolve(&path) {
            Ok(resolved) => resolved,
            Err(super::resolver::ResolveError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta = std::fs::metadata(&resolved.host)
            .map_err(|e| WitError::Io(format!("cannot stat {path}: {e}")))?;
        let file_type = meta.file_type();
        let (kind, rdev) = if file_type.is_char_device() {
            (NodeKind::Char, meta.rdev())
        } else if file_type.is_block_device() {
            (NodeKind::Block, meta.rdev())
        } else if file_type.is_file() {
            // Fixture trees stand a plain file in for a node (creating real nodes needs root).
            (NodeKind::Char, 0)
        } else {
            return Err(WitError::InvalidArgument(format!(
                "{path} is not a device node"
            )));
        };
        Ok(Some(DevNode {
            path: resolved.node.display().to_string(),
            kind,
            major: major(rdev),
            minor: minor(rdev),
        }))
    }
}

/// glibc's `gnu_dev_major`.
fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

/// glibc's `gnu_dev_minor`.
fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_real_and_fixture_nodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/nvidia0"), "").unwrap();
        let mut fixture = crate::hostfns::testing::reader(dir.path());
        let node = fixture.lookup("/dev/nvidia0".into()).unwrap().unwrap();
        assert_eq!(
            (node.path.as_str(), node.kind, node.major, node.minor),
            ("/dev/nvidia0", NodeKind::Char, 0, 0)
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

    #[test]
    fn major_minor_match_glibc() {
        // makedev(195, 255) as glibc encodes it.
        let dev: u64 = ((195u64 & 0xfff) << 8) | (255u64 & 0xff);
        assert_eq!((major(dev), minor(dev)), (195, 255));
        // glibc's makedev for numbers above the old 8/12-bit ranges.
        let (ma, mi) = (5000u64, 70000u64);
        let big = ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12);
        assert_eq!((major(big), minor(big)), (5000, 70000));
    }
}
