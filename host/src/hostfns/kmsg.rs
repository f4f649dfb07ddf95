//! `kmsg` interface: new kernel log lines matching a guest's filter.
//!
//! Reads `/dev/kmsg` under the host root. On a node each `read` returns one record
//! (`prio,seq,usec,flags;message`, continuation lines start with a space); in fixture
//! trees the same records are lines of a plain file. The guest's cursor (the last
//! sequence number handed out) survives instance rebuilds, so an XID is reported once
//! to a guest. It starts at the newest record when the host started
//! ([`newest_sequence`]): what was logged before a restart or a rollout is not reported
//! again as new (a GPU that was reset and is fine stays in service), while a guest
//! reloaded after a ConfigMap edit reads again what was logged since the host started,
//! so it forgets no XID of this run. The price: an XID logged while no host was running
//! is not reported (the sysfs checks still see a GPU that is gone or a degraded link).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rustix::io::Errno;

use super::NodeAccess;
use crate::host_root::node_file::{Access, FileKind};
use crate::host_root::resolver::Resolver;
use crate::wit::latest::kmsg::Host;
use crate::wit::latest::types::Error as WitError;

/// The cursor before the first call.
pub const NOTHING_SEEN: i64 = -1;
/// Lines returned per call at most.
pub const MAX_LINES: usize = 256;
/// Longest line returned, in bytes.
pub const MAX_LINE_BYTES: usize = 1024;
/// The most bytes read per call (the kernel's buffer is typically 256 KiB – 1 MiB).
const MAX_READ_BYTES: usize = 4 << 20;
const KMSG: &str = "/dev/kmsg";

impl Host for NodeAccess {
    fn read_new(&mut self, filter: String) -> Result<Vec<String>, WitError> {
        if !self.grant().kmsg {
            return Err(WitError::Denied(format!(
                "guest {} is not granted the kernel log (kmsg)",
                self.guest()
            )));
        }
        let text = read_kmsg(self.resolver())?;
        let seen = self.kmsg_seen.load(Ordering::Relaxed);
        let mut newest = seen;
        let mut lines = Vec::new();
        for (seq, message) in text.lines().filter_map(parse_record) {
            if seq <= seen {
                continue;
            }
            if message.contains(filter.as_str()) {
                if lines.len() == MAX_LINES {
                    // Full: stop before this line, so the next call starts with it and a
                    // storm of matches never loses one.
                    break;
                }
                lines.push(crate::guest_text::clean_to(message, MAX_LINE_BYTES));
            }
            newest = newest.max(seq);
        }
        self.kmsg_seen.store(newest, Ordering::Relaxed);
        Ok(lines)
    }
}

/// The sequence number of the newest record in the kernel log under `host_root` now
/// ([`NOTHING_SEEN`] when it cannot be read: then nothing is skipped).
pub fn newest_sequence(host_root: &Path) -> i64 {
    match read_kmsg(&Resolver::new(host_root, Vec::new())) {
        Ok(text) => text
            .lines()
            .filter_map(parse_record)
            .map(|(seq, _)| seq)
            .max()
            .unwrap_or(NOTHING_SEEN),
        Err(e) => {
            tracing::debug!(error = %e, "the kernel log cannot be read at start; no cursor");
            NOTHING_SEEN
        }
    }
}

/// `/dev/kmsg` under `resolver`'s host root, opened like every node path (a link there
/// stays under the host root) and read without blocking.
fn read_kmsg(resolver: &Resolver) -> Result<String, WitError> {
    let cannot = |reason: String| WitError::Io(format!("cannot read {KMSG}: {reason}"));
    let kmsg = resolver
        .with_grant(vec![PathBuf::from(KMSG)])
        .open(KMSG)
        .map_err(|e| cannot(e.to_string()))?;
    match kmsg.kind().map_err(|e| cannot(e.reason()))? {
        // A plain file in fixture trees.
        FileKind::CharDevice | FileKind::Regular => {}
        found => return Err(cannot(format!("it is {found}"))),
    }
    let file = kmsg.reopen(Access::Read).map_err(|e| cannot(e.reason()))?;
    read_records(file).map_err(|e| cannot(e.to_string()))
}

/// Reads everything available without blocking (the file is non-blocking): record by
/// record from `/dev/kmsg` (which ends with `EAGAIN`), or the whole of a plain file.
fn read_records(mut file: std::fs::File) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    while out.len() < MAX_READ_BYTES {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // EPIPE: the record we were about to read was overwritten; the next read
            // continues with the oldest one still there.
            Err(e) if e.raw_os_error() == Some(Errno::PIPE.raw_os_error()) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `prio,seq,usec,flags[,...];message` → (seq, message). Continuation lines (` KEY=v`)
/// and anything malformed yield nothing.
fn parse_record(line: &str) -> Option<(i64, &str)> {
    if line.starts_with(' ') {
        return None;
    }
    let (header, message) = line.split_once(';')?;
    let seq = header.split(',').nth(1)?.parse().ok()?;
    Some((seq, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Grant;
    use std::sync::Arc;

    fn access(root: &std::path::Path, kmsg: bool) -> NodeAccess {
        let grant = Grant {
            kmsg,
            ..Grant::none()
        };
        NodeAccess::new("t", root, Arc::new(grant), "/var/run/cdi")
    }

    #[test]
    fn hands_out_each_matching_line_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        let kmsg = dir.path().join("dev/kmsg");
        std::fs::write(
            &kmsg,
            "4,100,5,-;NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off the bus.\n SUBSYSTEM=pci\n6,101,6,-;eth0: link up\n",
        )
        .unwrap();
        let mut a = access(dir.path(), true);
        let first = a.read_new("NVRM: Xid".into()).unwrap();
        assert_eq!(first.len(), 1);
        assert!(first[0].contains("79"));
        assert!(
            a.read_new("NVRM: Xid".into()).unwrap().is_empty(),
            "nothing new"
        );
        let mut more = std::fs::read_to_string(&kmsg).unwrap();
        more.push_str("4,102,7,-;NVRM: Xid (PCI:0000:2a:00): 48, pid=2, DBE\n");
        std::fs::write(&kmsg, more).unwrap();
        // A rebuilt instance shares the cursor.
        let mut rebuilt = a.clone();
        let second = rebuilt.read_new("NVRM: Xid".into()).unwrap();
        assert_eq!(second.len(), 1);
        assert!(second[0].contains("48"));
    }

    #[test]
    fn records_from_before_the_start_are_not_news() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        let kmsg = dir.path().join("dev/kmsg");
        assert_eq!(
            newest_sequence(dir.path()),
            NOTHING_SEEN,
            "no log: no cursor"
        );
        std::fs::write(
            &kmsg,
            "4,7,5,-;NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off the bus.\n",
        )
        .unwrap();
        let start = newest_sequence(dir.path());
        assert_eq!(start, 7);
        let mut a = access(dir.path(), true).with_kmsg_start(start);
        assert!(a.read_new("NVRM: Xid".into()).unwrap().is_empty());
        let mut more = std::fs::read_to_string(&kmsg).unwrap();
        more.push_str("4,8,9,-;NVRM: Xid (PCI:0000:18:00): 48, pid=2, DBE\n");
        std::fs::write(&kmsg, more).unwrap();
        let news = a.read_new("NVRM: Xid".into()).unwrap();
        assert_eq!(news.len(), 1);
        assert!(news[0].contains("48"), "{news:?}");
        // A new version of the guest (a reload) reads again from the start, not from 0.
        let mut reloaded = access(dir.path(), true).with_kmsg_start(start);
        assert_eq!(reloaded.read_new("NVRM: Xid".into()).unwrap(), news);
    }

    #[test]
    fn needs_the_grant() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            access(dir.path(), false).read_new("x".into()),
            Err(WitError::Denied(_))
        ));
    }

    #[test]
    fn a_storm_is_handed_out_in_pages_without_losing_a_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        let storm: String = (0..600)
            .map(|i| {
                format!(
                    "4,{i},1,-;NVRM: Xid (PCI:0000:18:00): {}, pid=1\n",
                    31 + i % 2
                )
            })
            .collect();
        std::fs::write(dir.path().join("dev/kmsg"), storm).unwrap();
        let mut a = access(dir.path(), true);
        let pages: Vec<usize> = (0..4)
            .map(|_| a.read_new("NVRM: Xid".into()).unwrap().len())
            .collect();
        assert_eq!(pages, vec![MAX_LINES, MAX_LINES, 600 - 2 * MAX_LINES, 0]);
    }
}
