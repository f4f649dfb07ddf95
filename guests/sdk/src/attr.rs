//! sysfs and procfs files: reading them through the host's `sysfs` and parsing the
//! kernel's text formats (one value per attribute, `Key: value` reports, hex IDs, NUMA
//! nodes). The parsers are plain functions of text, so guests unit-test them natively.

use std::str::FromStr;

use crate::error::context;
use crate::host::sysfs;
use crate::types::Error;

/// The `Key: value` lines of a report such as `/proc/driver/nvidia/gpus/*/information`,
/// keys trimmed, values without the spaces and tabs that align them. Lines without a
/// colon are skipped; a value keeps any further colons (`Bus Location: 0000:1b:00.0`).
pub fn key_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once(':')?;
        Some((key.trim(), value.trim_matches(|c| c == ' ' || c == '\t')))
    })
}

/// The value of `key` in a `Key: value` report; the first one when repeated.
pub fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    key_values(text).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// A number in an attribute file (`"16\n"`); none for anything else.
pub fn number<T: FromStr>(text: &str) -> Option<T> {
    text.trim().parse().ok()
}

/// A hexadecimal attribute such as `vendor` (`"0x10de\n"`); the `0x` is optional.
pub fn hex(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

/// A `numa_node` attribute: none when the kernel says `-1` (no affinity) or anything
/// that is not a node number.
pub fn numa_node(text: &str) -> Option<u32> {
    number(text)
}

/// A file's text without the trailing newline sysfs adds.
pub fn read_trimmed(path: &str) -> Result<String, Error> {
    sysfs::read_file(path)
        .map(|text| text.trim_end_matches('\n').to_string())
        .map_err(|e| context(e, &format!("reading {path}")))
}

/// A numeric attribute; none when it is missing, unreadable or not a number (optional
/// attributes such as `current_link_width` are absent on some devices).
pub fn read_number<T: FromStr>(path: &str) -> Option<T> {
    number(&sysfs::read_file(path).ok()?)
}

/// A directory's entries, sorted; a directory that does not exist has none (no device
/// of that class, no driver loaded). Other failures, such as a refused path, are errors.
pub fn list_or_empty(dir: &str) -> Result<Vec<String>, Error> {
    match sysfs::list_dir(dir) {
        Ok(names) => Ok(names),
        Err(Error::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(context(e, &format!("listing {dir}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFORMATION: &str = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 185\n\
        GPU UUID: \t GPU-1234\nBus Location: \t 0000:1b:00.0\nno colon here\n\
        Device Minor: \t 3\n";

    #[test]
    fn reads_key_value_reports() {
        assert_eq!(
            value_of(INFORMATION, "Model"),
            Some("NVIDIA H100 80GB HBM3")
        );
        assert_eq!(value_of(INFORMATION, "Bus Location"), Some("0000:1b:00.0"));
        assert_eq!(
            value_of(INFORMATION, "Device Minor").and_then(number),
            Some(3u32)
        );
        assert_eq!(value_of(INFORMATION, "Serial"), None);
        assert_eq!(key_values(INFORMATION).count(), 5);
    }

    #[test]
    fn reads_numbers_hex_and_numa_nodes() {
        assert_eq!(number::<u32>("16\n"), Some(16));
        assert_eq!(number::<u32>("x\n"), None);
        assert_eq!(hex("0x10de\n"), Some(0x10de));
        assert_eq!(hex("030200"), Some(0x030200));
        assert_eq!(hex("0xzz"), None);
        assert_eq!(numa_node("1\n"), Some(1));
        assert_eq!(numa_node("-1\n"), None);
        assert_eq!(numa_node(""), None);
    }
}
