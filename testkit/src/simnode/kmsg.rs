//! The kernel log, `/dev/kmsg`, as the host reads it in fixture trees: a plain file of
//! records `prio,seq,usec,flags;message`, with continuation lines (` KEY=value`) after
//! some. Appending rewrites the file atomically, so a reader sees whole records only.

use std::io;

use super::SimNode;

const KMSG: &str = "/dev/kmsg";
/// `KERN_WARNING`, the level NVRM logs XIDs at.
const WARNING: u32 = 4;

/// What the driver prints after the XID number, for a few common ones.
fn xid_text(xid: u32) -> &'static str {
    match xid {
        13 => "Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address",
        31 => {
            "Ch 00000010, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f1e_00000000"
        }
        43 => "Ch 00000008",
        48 => {
            "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0."
        }
        79 => "GPU has fallen off the bus.",
        94 => "Contained: SM (0x1). RST: No, D-RST: No",
        _ => "Unexpected error",
    }
}

/// The driver's XID line for the GPU at `address` (`DDDD:BB:DD.F`; the line names
/// `DDDD:BB:DD`).
pub fn xid_message(address: &str, xid: u32) -> String {
    let bus = address.rsplit_once('.').map_or(address, |(bus, _)| bus);
    format!(
        "NVRM: Xid (PCI:{bus}): {xid}, pid=4242, name=python3, {}",
        xid_text(xid)
    )
}

impl SimNode {
    /// Appends kernel log records, one per message, numbered after the last record.
    pub fn log_kernel(&self, messages: &[String]) -> io::Result<()> {
        let path = self.tree.path(KMSG);
        let mut text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let first = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split(',').nth(1)?.parse::<u64>().ok())
            .max()
            .map_or(0, |s| s + 1);
        for (seq, message) in (first..).zip(messages) {
            let usec = 5_000_000 + seq * 1_000;
            text.push_str(&format!("{WARNING},{seq},{usec},-;{message}\n"));
            if message.starts_with("NVRM: Xid") {
                text.push_str(" SUBSYSTEM=pci\n");
            }
        }
        self.tree.write(KMSG, &text)
    }

    /// Logs one XID for the GPU at `address`, as the driver does.
    pub fn log_xid(&self, address: &str, xid: u32) -> io::Result<()> {
        self.log_kernel(&[xid_message(address, xid)])
    }

    /// An XID storm: `rounds` rounds of every `(address, xid)` in `events`, each XID line
    /// followed by unrelated driver and kernel chatter, all in one append.
    pub fn log_xid_storm(&self, events: &[(&str, u32)], rounds: usize) -> io::Result<()> {
        let mut messages = Vec::new();
        for round in 0..rounds {
            for (k, &(address, xid)) in events.iter().enumerate() {
                messages.push(xid_message(address, xid));
                messages.push(if (round + k) % 2 == 0 {
                    "NVRM: GPU at PCI:0000:00:00: GPU-00000000-0000-0000-0000-000000000000".into()
                } else {
                    format!("pcieport 0000:17:01.0: AER: Corrected error received: {address}")
                });
            }
        }
        self.log_kernel(&messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_numbered_and_xids_look_like_the_drivers() {
        let dir = tempfile::tempdir().unwrap();
        let node = SimNode::mixed_l40s_a100(dir.path()).unwrap();
        node.log_xid("0000:1a:00.0", 79).unwrap();
        node.log_xid_storm(&[("0000:88:00.0", 13), ("0000:3b:00.0", 48)], 2)
            .unwrap();
        let text = std::fs::read_to_string(node.path(KMSG)).unwrap();
        let records: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(records.len(), 1 + 1 + 8);
        assert_eq!(
            records[1],
            "4,1,5001000,-;NVRM: Xid (PCI:0000:1a:00): 79, pid=4242, name=python3, GPU has fallen off the bus."
        );
        let seqs: Vec<u64> = records
            .iter()
            .map(|r| r.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        assert_eq!(text.matches("NVRM: Xid (PCI:0000:3b:00): 48").count(), 2);
    }
}
