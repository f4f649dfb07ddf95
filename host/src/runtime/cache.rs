//! The compiled-artifact cache: a restart loads guests without compiling them again.
//!
//! Compiled code is native code that wasmtime loads without re-validating it, so the
//! cache directory must be the host's own (an `emptyDir`, mode 0700), never a volume an
//! operator or a guest can write. Entries are keyed by the SHA-256 of the `.wasm` and the
//! engine's compatibility hash (wasmtime version, target, settings), so a foreign entry is
//! never even looked up; each entry also carries the SHA-256 of its own contents, so a
//! corrupt one is detected, removed and rebuilt instead of loaded.
//!
//! Because of that trust, [`CompileCache::open`] makes the directory private: it must
//! belong to the host's user, a directory open to others (an `emptyDir` is created
//! 0777) is made 0700 and emptied (what is already there may be anyone's), and a
//! directory the host cannot make private is refused. Entries are loaded only when they
//! belong to the host's user and nobody else may write them. The directory is kept
//! under a size budget: least recently used entries go first.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Identifies the entry format.
const MAGIC: &[u8; 8] = b"WDPCWSM1";
const HEADER: usize = MAGIC.len() + 32;
/// Total size of entries kept by default. A compiled guest of the 1 MiB maximum is a
/// few MiB, so this keeps dozens of guest versions, and stays well inside the shipped
/// DaemonSet's 256 MiB `emptyDir` (a pod whose emptyDir outgrows its limit is evicted).
pub const DEFAULT_MAX_BYTES: u64 = 128 << 20;
/// File name extension of an entry.
const ENTRY_EXTENSION: &str = "cwasm";

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
    max_bytes: u64,
}

impl CompileCache {
    /// Creates `dir` (mode 0700) if needed, makes an existing one private (see the
    /// module documentation) or refuses it with the reason, and prunes it to
    /// [`DEFAULT_MAX_BYTES`].
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        Self::open_with_budget(dir, DEFAULT_MAX_BYTES)
    }

    /// Like [`open`](Self::open), keeping at most `max_bytes` of entries.
    pub fn open_with_budget(dir: impl Into<PathBuf>, max_bytes: u64) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        make_private(&dir)?;
        let cache = Self { dir, max_bytes };
        cache.remove_temporaries();
        cache.prune();
        Ok(cache)
    }

    /// Temporary files a killed run left (at open only: later, one may be a concurrent
    /// store's).
    fn remove_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.starts_with("tmp"))
            {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Removes the least recently used entries until their total is within the budget.
    /// Blocking; failures are logged.
    pub fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if path.extension().is_some_and(|e| e == ENTRY_EXTENSION) && meta.is_file() {
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                kept.push((used, meta.len(), path));
            }
        }
        let mut total: u64 = kept.iter().map(|(_, len, _)| len).sum();
        if total <= self.max_bytes {
            return;
        }
        kept.sort();
        for (_, len, path) in kept {
            if total <= self.max_bytes {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    tracing::info!(entry = %path.display(), "compiled-guest cache over its budget; least recently used entry removed");
                }
                Err(e) => {
                    tracing::warn!(entry = %path.display(), error = %e, "cannot prune the compiled-guest cache")
                }
            }
        }
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
        self.dir.join(format!("{key}.{ENTRY_EXTENSION}"))
    }

    /// The valid entry's component for `key` (see [`artifact_key`]); an unreadable,
    /// corrupt or incompatible entry is removed and `None` returned. Blocking.
    pub(crate) fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let entry = self.entry_path(key);
        let entry = entry.as_path();
        let bytes = match read_own(entry) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(entry = %entry.display(), error = %e, "cache entry not the host's own removed; compiling instead");
                let _ = std::fs::remove_file(entry);
                return None;
            }
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
            Ok(component) => {
                // Recently used: the last to be pruned.
                if let Ok(file) = std::fs::File::options().write(true).open(entry) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Some(component)
            }
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
        self.prune();
    }
}

/// Makes `dir` private to the host's user, or says why it cannot be trusted.
fn make_private(dir: &Path) -> std::io::Result<()> {
    let refuse = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} {why}; compiled code is loaded from there without re-validation, so give a directory of the host's own (an emptyDir)",
                dir.display()
            ),
        )
    };
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(refuse("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "belongs to uid {}, not to the host's uid {me}",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            refuse(format!(
                "is open to others (mode {mode:o}) and cannot be made private: {e}"
            ))
        })?;
        // What is there may have been written by anyone while it was open.
        let mut removed = 0;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry
                .file_type()
                .is_ok_and(|t| t.is_file() || t.is_symlink())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        tracing::info!(
            dir = %dir.display(),
            was = format!("{mode:o}"),
            removed,
            "compiled-guest cache directory was open to others: made private (0700) and emptied"
        );
    }
    Ok(())
}

/// Reads an entry that belongs to the host's user and that nobody else may write
/// (checked on the open file, so it is the file that is read); `PermissionDenied`
/// otherwise.
fn read_own(entry: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(entry)?;
    let meta = file.metadata()?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "not a file of uid {me} that only it may write (uid {}, mode {:o})",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes an entry: header, checksum, code, through a temporary file and a rename so a
/// reader never sees half of one.
fn write_entry(entry: &Path, code: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
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

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_directory_open_to_others_is_made_private_and_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        std::fs::create_dir(&cache_dir).unwrap();
        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let engine = engine();
        let planted = cache_dir.join(format!(
            "{}.{ENTRY_EXTENSION}",
            artifact_key(&engine, EMPTY_COMPONENT)
        ));
        std::fs::write(&planted, b"anyone's code").unwrap();
        let cache = CompileCache::open(&cache_dir).unwrap();
        assert_eq!(mode(&cache_dir), 0o700);
        assert!(
            !planted.exists(),
            "what was there while it was open is gone"
        );
        let (_, outcome) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(outcome, CacheOutcome::Compiled);
        assert_eq!(mode(&planted), 0o600, "entries are the host's alone");
    }

    #[test]
    fn an_entry_others_may_write_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path().join("cache")).unwrap();
        let engine = engine();
        cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        let entry = cache.entry_path(&artifact_key(&engine, EMPTY_COMPONENT));
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (_, outcome) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(
            outcome,
            CacheOutcome::Compiled,
            "refused, removed, compiled"
        );
        let (_, outcome) = cache.get_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
    }

    #[test]
    fn a_link_or_a_directory_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = CompileCache::open(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&real, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            let err = CompileCache::open(&real).unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        } else {
            eprintln!("not root: the other-owner case is not checked");
        }
    }

    #[test]
    fn the_least_recently_used_entries_go_first_over_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        CompileCache::open(&path).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        for (name, age) in [("old", 3), ("middle", 2), ("new", 1)] {
            let entry = path.join(format!("{name}.{ENTRY_EXTENSION}"));
            std::fs::write(&entry, vec![0u8; 1000]).unwrap();
            let file = std::fs::File::options().write(true).open(&entry).unwrap();
            file.set_modified(SystemTime::now() - day * age).unwrap();
        }
        std::fs::write(path.join("x.tmp42"), b"half").unwrap();
        std::fs::write(path.join("k.refused"), b"{}").unwrap();
        let cache = CompileCache::open_with_budget(&path, 2000).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["k.refused", "middle.cwasm", "new.cwasm"]);
        drop(cache);
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
