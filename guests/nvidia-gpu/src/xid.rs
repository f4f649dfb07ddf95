//! NVIDIA XID errors as the driver logs them to the kernel log:
//! `NVRM: Xid (PCI:0000:18:00): 79, pid=1234, name=python, GPU has fallen off the bus.`

/// The substring every XID line contains; the host's kernel-log filter.
pub const FILTER: &str = "NVRM: Xid";

/// One XID event: the GPU's `DDDD:BB:DD` (the driver leaves out the function) and the
/// XID number.
#[derive(Debug, PartialEq, Eq)]
pub struct Xid<'a> {
    pub bus: &'a str,
    pub xid: u32,
}

impl Xid<'_> {
    /// Whether the event names the GPU at `address` (`DDDD:BB:DD.F`).
    pub fn is_for(&self, address: &str) -> bool {
        address
            .get(..self.bus.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(self.bus))
            && address[self.bus.len()..].starts_with('.')
    }
}

/// Parses one line; anything that is not an XID line yields nothing. Older drivers
/// leave out the `PCI:` before the address.
pub fn parse(line: &str) -> Option<Xid<'_>> {
    let rest = &line[line.find(FILTER)? + FILTER.len()..];
    let rest = rest.trim_start().strip_prefix('(')?;
    let (bus, rest) = rest.split_once(')')?;
    let bus = bus.strip_prefix("PCI:").unwrap_or(bus);
    let rest = rest.strip_prefix(':')?.trim_start();
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .map_or(rest, |end| &rest[..end]);
    let xid = digits.parse().ok()?;
    (!bus.is_empty()).then_some(Xid { bus, xid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_current_and_old_formats() {
        let x = parse("NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off the bus.");
        assert_eq!(
            x,
            Some(Xid {
                bus: "0000:18:00",
                xid: 79
            })
        );
        let x = parse("NVRM: Xid (0000:3B:00): 48, An uncorrectable double bit error").unwrap();
        assert_eq!((x.bus, x.xid), ("0000:3B:00", 48));
        assert!(x.is_for("0000:3b:00.0"));
        assert!(!x.is_for("0000:3b:01.0") && !x.is_for("0000:3b:000.0"));
        let x = parse("NVRM: Xid (PCI:0000:18:00): 13").unwrap();
        assert_eq!(x.xid, 13);
    }

    #[test]
    fn other_lines_yield_nothing() {
        for line in [
            "",
            "NVRM: loading NVIDIA UNIX x86_64 Kernel Module",
            "NVRM: Xid",
            "NVRM: Xid (PCI:0000:18:00) 79",
            "NVRM: Xid (PCI:0000:18:00): abc",
            "NVRM: Xid (): 79",
        ] {
            assert_eq!(parse(line), None, "{line}");
        }
    }
}
