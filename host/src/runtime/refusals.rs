//! Guests refused for their compile budget, remembered by content.
//!
//! A compile bomb costs its whole budget every time it is tried; the host re-reads the
//! guests directory after every change and on every start, so without memory one bad
//! file would cost a minute of a core at each of them. A refusal is filed under the
//! file's SHA-256 and the engine (the key of the compiled-guest cache): in memory, and
//! as a marker file `<key>.refused` in the cache directory when there is one, so a
//! restart refuses the file at once. A changed file has another hash and is tried
//! again; so is the same file once the operator raises the budget, or after a host
//! upgrade (another engine).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::compiler::{CompileBudget, Refusal, RefusalCause};

/// Refusals by artifact key ([`super::cache::artifact_key`]).
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    known: Mutex<HashMap<String, Refusal>>,
    /// Where markers are kept (the compiled-guest cache directory), if anywhere.
    dir: Option<PathBuf>,
}

/// A marker file's contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Marker {
    cause: Cause,
    /// How the compiler crashed (for `crashed`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    detail: String,
    timeout_ms: u64,
    memory_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Cause {
    Timeout,
    Memory,
    Crashed,
}

impl Refusals {
    /// Refusals kept in memory, and as markers in `dir` when given.
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            known: Mutex::default(),
            dir,
        }
    }

    /// The refusal remembered for `key` that still holds under `budget`: none when there
    /// is none, or when `budget` is larger than the one the guest was refused under (an
    /// operator who raised the budget wants it tried again). Reads the marker file, so
    /// it blocks briefly.
    pub(crate) fn lookup(&self, key: &str, budget: &CompileBudget) -> Option<Refusal> {
        let remembered = self.known().get(key).cloned();
        let refusal = match remembered {
            Some(refusal) => refusal,
            None => {
                let refusal = self.read_marker(key)?;
                self.known().insert(key.to_owned(), refusal.clone());
                refusal
            }
        };
        (!budget.exceeds(&refusal.budget)).then_some(refusal)
    }

    /// Remembers that compiling `key` was refused. A marker that cannot be written is
    /// logged: the refusal still holds until the host restarts.
    pub(crate) fn remember(&self, key: &str, refusal: &Refusal) {
        self.known().insert(key.to_owned(), refusal.clone());
        let Some(path) = self.marker_path(key) else {
            return;
        };
        if let Err(e) = write_marker(&path, refusal) {
            tracing::warn!(
                marker = %path.display(),
                error = %e,
                "cannot remember the refusal in the cache directory; the next start tries to compile the guest again"
            );
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Refusal>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it invalid.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn marker_path(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{key}.refused")))
    }

    /// The refusal a marker records; an unreadable or malformed marker is removed (the
    /// guest is then compiled again, within its budget).
    fn read_marker(&self, key: &str) -> Option<Refusal> {
        let path = self.marker_path(key)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(marker = %path.display(), error = %e, "cannot read a remembered refusal; compiling the guest again");
                return None;
            }
        };
        match serde_json::from_str::<Marker>(&text) {
            Ok(marker) => Some(marker.into()),
            Err(e) => {
                tracing::warn!(marker = %path.display(), error = %e, "malformed remembered refusal removed; compiling the guest again");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

fn write_marker(path: &Path, refusal: &Refusal) -> std::io::Result<()> {
    let (cause, detail) = match &refusal.cause {
        RefusalCause::Timeout => (Cause::Timeout, String::new()),
        RefusalCause::Memory => (Cause::Memory, String::new()),
        RefusalCause::Crashed(how) => (Cause::Crashed, how.clone()),
    };
    let marker = Marker {
        cause,
        detail,
        timeout_ms: u64::try_from(refusal.budget.timeout.as_millis()).unwrap_or(u64::MAX),
        memory_bytes: refusal.budget.memory_bytes,
    };
    let text = serde_json::to_vec(&marker).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl From<Marker> for Refusal {
    fn from(marker: Marker) -> Self {
        Refusal {
            cause: match marker.cause {
                Cause::Timeout => RefusalCause::Timeout,
                Cause::Memory => RefusalCause::Memory,
                Cause::Crashed => RefusalCause::Crashed(crate::guest_text::clean(&marker.detail)),
            },
            budget: CompileBudget {
                timeout: Duration::from_millis(marker.timeout_ms),
                memory_bytes: marker.memory_bytes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(secs: u64, mib: u64) -> CompileBudget {
        CompileBudget {
            timeout: Duration::from_secs(secs),
            memory_bytes: mib << 20,
        }
    }

    fn refused(cause: RefusalCause, budget: CompileBudget) -> Refusal {
        Refusal { cause, budget }
    }

    #[test]
    fn a_refusal_holds_until_the_budget_grows() {
        let refusals = Refusals::new(None);
        let refusal = refused(RefusalCause::Timeout, budget(3, 512));
        refusals.remember("k", &refusal);
        assert_eq!(refusals.lookup("k", &budget(3, 512)), Some(refusal.clone()));
        assert_eq!(refusals.lookup("k", &budget(2, 256)), Some(refusal));
        assert_eq!(refusals.lookup("k", &budget(4, 512)), None, "longer");
        assert_eq!(refusals.lookup("k", &budget(3, 1024)), None, "larger");
        assert_eq!(refusals.lookup("other", &budget(3, 512)), None);
    }

    #[test]
    fn markers_outlive_the_process_and_bad_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = refused(
            RefusalCause::Crashed("killed by SIGSEGV: no message".into()),
            budget(60, 2048),
        );
        Refusals::new(Some(dir.path().into())).remember("k", &crashed);
        Refusals::new(Some(dir.path().into()))
            .remember("m", &refused(RefusalCause::Memory, budget(60, 2048)));

        let restarted = Refusals::new(Some(dir.path().into()));
        assert_eq!(restarted.lookup("k", &budget(60, 2048)), Some(crashed));
        assert_eq!(
            restarted.lookup("m", &budget(60, 2048)).map(|r| r.cause),
            Some(RefusalCause::Memory)
        );

        let bad = dir.path().join("bad.refused");
        std::fs::write(&bad, "{\"cause\": \"boredom\"}").unwrap();
        assert_eq!(restarted.lookup("bad", &budget(60, 2048)), None);
        assert!(!bad.exists(), "a malformed marker is removed");
    }
}
