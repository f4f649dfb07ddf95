//! Device nodes under `/dev`, through the host's `devfs` (needs a `read` grant for them).

use crate::error::message;
use crate::host::devfs;

/// Whether a device node exists. A failed lookup (say, not granted) counts as absent and
/// is logged, so that one bad node leaves it out of an allocation rather than failing it.
pub fn present(path: &str) -> bool {
    match devfs::lookup(path) {
        Ok(found) => found.is_some(),
        Err(e) => {
            crate::log::warn(&format!("cannot look up {path}: {}", message(e)));
            false
        }
    }
}
