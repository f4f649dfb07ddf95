//! The compiled-artifact cache: a restart loads guests without compiling them again.
//!
//! Compiled code is native code that wasmtime loads without re-validating it, so the
//! cache directory must be the host's own (an `emptyDir`, mode 0700), never a volume an
//! operator or a guest can write. Entries are keyed by the SHA-256 of the `.wasm` and the
//! engine's compatibility hash (wasmtime version, target, settings), so a foreign entry is
//! never even looked up; each entry also carries the SHA-256 of its own contents, so a
//! corrupt one is detected, removed and rebuilt instead of loaded.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Identifies the entry format.
const MAGIC: &[u8; 8] = b"WDPCWSM1";
const HEADER: usize = MAGIC.len() + 32;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry: nothing was compiled.
    Hit,
    /// Compiled (no cache, no entry yet, or an entry that was invalid and replaced).
    Compiled,
}

/// A directory of compiled guests.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Creates `dir` (mode 0700) if needed.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Self { dir })
    }

    /// The directory (refusals are remembered beside the entries).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The component for `wasm`, from the cache when a valid entry exists, else compiled
    /// in this process (and stored for next time). Runs on a blocking thread. The host
    /// compiles through its [`Compiler`](super::compiler::Compiler) instead, which
    /// can hold the compile to a budget; this is for tools and benchmarks.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let key = artifact_key(engine, wasm);
        if let Some(component) = self.load(engine, &key) {
            return Ok((component, CacheOutcome::Hit));
        }
        let component = Component::new(engine, wasm)?;
        self.store_logged(&key, &component.serialize()?);
        Ok((component, CacheOutcome::Compiled))
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// The valid entry's component for `key` (see [`artifact_key`]); an unreadable,
    /// corrupt or incompatible entry is removed and `None` returned. Blocking.
    pub(crate) fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let entry = self.entry_path(key);
        let entry = entry.as_path();
        let bytes = match std::fs::read(entry) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(entry = %entry.display(), error = %e, "cannot read a cache entry; compiling instead");
                return None;
            }
        };
        let intact = bytes.len() > HEADER
            && &bytes[..MAGIC.len()] == MAGIC
            && bytes[MAGIC.len()..HEADER] == Sha256::digest(&bytes[HEADER..])[..];
        if !intact {
            tracing::warn!(entry = %entry.display(), "corrupt compiled-guest cache entry removed; compiling instead");
            let _ = std::fs::remove_file(entry);
            return None;
        }
        // SAFETY: the bytes are what `Component::serialize` wrote with this engine's
        // compatibility hash in the key, checked against the SHA-256 stored with them,
        // in a directory only this host writes (see the module documentation).
        // `deserialize` still rejects artifacts of another wasmtime version or config.
        match unsafe { Component::deserialize(engine, &bytes[HEADER..]) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(entry = %entry.display(), error = %e, "unusable compiled-guest cache entry removed; compiling instead");
                let _ = std::fs::remove_file(entry);
                None
            }
        }
    }

    /// Stores `code` (a serialized component) as the entry for `key`, logging a failure:
    /// the guest still loads, the next start compiles it again. Blocking.
    pub(crate) fn store_logged(&self, key: &str, code: &[u8]) {
        let entry = self.entry_path(key);
        if let Err(e) = write_entry(&entry, code) {
            tracing::warn!(entry = %entry.display(), error = %e, "cannot write the compiled-guest cache; the next start compiles again");
        }
    }
}

/// Writes an entry: header, checksum, code, through a temporary file and a rename so a
/// reader never sees half of one.
fn write_entry(entry: &Path, code: &[u8]) -> std::io::Result<()> {
    let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(MAGIC)?;
    file.write_all(&Sha256::digest(code))?;
    file.write_all(code)?;
    file.sync_all()?;
    std::fs::rename(&tmp, entry)
}

/// The name under which what compiling `wasm` gave is filed (a cache entry, a
/// remembered refusal): the SHA-256 of the `.wasm` and the engine's compatibility hash
/// (wasmtime version, target, settings), so another engine never finds it.
pub(crate) fn artifact_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    format!(
        "{}-{:016x}",
        hex(&Sha256::digest(wasm)),
        engine_hash.finish()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component there is.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn engine() -> Engine {
        Engine::default()
    }

    #[test]
    fn second_load_is_a_hit_and_corruption_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path().join("cache")).unwrap();
        let engine = engine();
        let (_, first) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(first, CacheOutcome::Compiled);
        let (_, second) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(second, CacheOutcome::Hit);

        // Flip one byte of the compiled code: detected, removed, recompiled.
        let entry = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        let (_, third) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(third, CacheOutcome::Compiled);
        let (_, fourth) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(fourth, CacheOutcome::Hit);
    }

    #[test]
    fn a_foreign_entry_with_a_valid_checksum_is_refused_by_wasmtime() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        let engine = engine();
        let entry = cache.entry_path(&artifact_key(&engine, EMPTY_COMPONENT));
        let junk = b"not compiled code at all".to_vec();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&Sha256::digest(&junk));
        bytes.extend_from_slice(&junk);
        std::fs::write(&entry, bytes).unwrap();
        let (_, outcome) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled);
    }
}
