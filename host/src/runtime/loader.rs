//! From a `.wasm` file to a running, checked guest.
//!
//! Cheap checks first (size, header), then compile, then link: `instantiate_pre`
//! type-checks every import and export against the contract, so a guest built for
//! another contract is refused here with wasmtime's precise message. Last, a smoke run:
//! instantiate, `configure`, `resources`. Only then is the guest handed out.

use std::path::{Path, PathBuf};

use thiserror::Error;
use wasmtime::component::Component;

use std::sync::atomic::Ordering;

use super::cache::CacheOutcome;
use super::engine::Runtime;
use super::error::GuestError;
use super::guest::Guest;
use super::signature::SignatureError;
use crate::config::policy::GuestPolicy;
use crate::wit::latest::DevicePluginPre;

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Version and layer bytes of a core module (`01 00 00 00`).
const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];

/// Why a guest was not loaded. Each message names the file and what to do.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes is over the {limit}-byte limit for a guest")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(transparent)]
    Signature(SignatureError),
    #[error("{path}: not a WebAssembly binary (no \\0asm header)")]
    NotWasm { path: PathBuf },
    #[error(
        "{path}: a core WebAssembly module, not a component; build guests with `cargo build --target wasm32-wasip2`"
    )]
    CoreModule { path: PathBuf },
    #[error("{path}: does not compile: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error(
        "{path}: does not match the wdp:device-plugin@0.1 contract (is it a device-plugin guest?): {reason}"
    )]
    Link { path: PathBuf, reason: String },
    #[error("{path}: refused to start: {source}")]
    Start {
        path: PathBuf,
        #[source]
        source: GuestError,
    },
}

impl Runtime {
    /// Loads `path` as guest `name`, configured with `config` (the operator's text),
    /// with the capabilities and limits of `policy`. Compilation runs on a blocking
    /// thread; the guest then runs on its own thread.
    pub async fn load(
        &self,
        name: &str,
        path: &Path,
        config: String,
        policy: GuestPolicy,
    ) -> Result<Guest, LoadError> {
        let bytes = self.read_checked(path).await?;
        if let Some(trusted) = &self.trusted {
            trusted.verify(path, &bytes).map_err(LoadError::Signature)?;
        }
        let engine = self.engine.clone();
        let linker = self.linker.clone();
        let cache = self.cache.clone();
        let stats = self.stats.clone();
        let owned = path.to_owned();
        let pre = tokio::task::spawn_blocking(move || -> Result<DevicePluginPre<_>, LoadError> {
            let compile_error = |e: wasmtime::Error| LoadError::Compile {
                path: owned.clone(),
                reason: format!("{e:#}"),
            };
            let (component, outcome) = match &cache {
                Some(cache) => cache
                    .get_or_compile(&engine, &bytes)
                    .map_err(compile_error)?,
                None => (
                    Component::new(&engine, &bytes).map_err(compile_error)?,
                    CacheOutcome::Compiled,
                ),
            };
            let counter = match outcome {
                CacheOutcome::Hit => &stats.cache_hits,
                CacheOutcome::Compiled => &stats.compiled,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(guest = %owned.display(), ?outcome, "guest code ready");
            let link = |e: wasmtime::Error| LoadError::Link {
                path: owned.clone(),
                reason: format!("{e:#}"),
            };
            let instance_pre = linker.instantiate_pre(&component).map_err(link)?;
            DevicePluginPre::new(instance_pre).map_err(link)
        })
        .await
        .map_err(|e| LoadError::Compile {
            path: path.to_owned(),
            reason: format!("compiler task failed: {e}"),
        })??;

        Guest::start(self, name, pre, config, policy)
            .await
            .map_err(|source| LoadError::Start {
                path: path.to_owned(),
                source,
            })
    }

    pub(crate) async fn read_checked(&self, path: &Path) -> Result<Vec<u8>, LoadError> {
        let read = |source| LoadError::Read {
            path: path.to_owned(),
            source,
        };
        let size = tokio::fs::metadata(path).await.map_err(read)?.len();
        let limit = self.limits.max_wasm_bytes;
        if size > limit {
            return Err(LoadError::TooLarge {
                path: path.to_owned(),
                size,
                limit,
            });
        }
        let bytes = tokio::fs::read(path).await.map_err(read)?;
        // The file may have grown between stat and read.
        if bytes.len() as u64 > limit {
            return Err(LoadError::TooLarge {
                path: path.to_owned(),
                size: bytes.len() as u64,
                limit,
            });
        }
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err(LoadError::NotWasm {
                path: path.to_owned(),
            });
        }
        if bytes[4..8] == CORE_MODULE {
            return Err(LoadError::CoreModule {
                path: path.to_owned(),
            });
        }
        Ok(bytes)
    }
}
