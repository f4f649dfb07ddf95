//! From a `.wasm` file to a running, checked guest.
//!
//! Cheap checks first (size, header, signature), then the code (a remembered refusal, the
//! cache, or the [`compiler`](super::compiler) within its budget), then link: `instantiate_pre`
//! type-checks every import and export against the contract, so a guest built for
//! another contract is refused here with wasmtime's precise message. Last, a smoke run:
//! instantiate, `configure`, `resources`. Only then is the guest handed out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use thiserror::Error;
use wasmtime::component::Component;

use super::cache::{CacheOutcome, artifact_key};
use super::compiler::{CompileError, Compiled, Refusal};
use super::engine::Runtime;
use super::error::GuestError;
use super::guest::Guest;
use super::signature::SignatureError;
use crate::policy::GuestPolicy;
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
    /// Compiling ran over its budget or crashed the compiler.
    #[error(
        "{path}: refused: {refusal}{}",
        if *remembered {
            " (remembered from an earlier attempt at this same content; a changed file or a larger budget is tried again)"
        } else {
            ""
        }
    )]
    Refused {
        path: PathBuf,
        refusal: Refusal,
        /// Refused without compiling, because the same content was refused before.
        remembered: bool,
    },
    /// The host could not run its compiler: a problem of the host, not of the guest.
    #[error("{path}: cannot be compiled, the host's compiler failed: {reason}")]
    Compiler { path: PathBuf, reason: String },
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
    /// with the capabilities and limits of `policy`. The code comes from the cache or
    /// the [`Compiler`](super::compiler::Compiler); linking runs on a blocking thread;
    /// the guest then runs on its own thread. Loads of different guests share no lock,
    /// so they can run concurrently.
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
        let (component, _) = self.component(path, bytes).await?;
        let linker = self.linker.clone();
        let owned = path.to_owned();
        let pre = tokio::task::spawn_blocking(move || -> Result<DevicePluginPre<_>, LoadError> {
            let link = |e: wasmtime::Error| LoadError::Link {
                path: owned.clone(),
                reason: format!("{e:#}"),
            };
            let instance_pre = linker.instantiate_pre(&component).map_err(link)?;
            DevicePluginPre::new(instance_pre).map_err(link)
        })
        .await
        .map_err(|e| LoadError::Link {
            path: path.to_owned(),
            reason: format!("linker task failed: {e}"),
        })??;

        Guest::start(self, name, pre, config, policy)
            .await
            .map_err(|source| LoadError::Start {
                path: path.to_owned(),
                source,
            })
    }

    /// The compiled component for `bytes` (read from `path` and checked): refused at
    /// once if compiling the same content was refused before under no smaller budget,
    /// else from the cache, else compiled (and then cached, or the refusal remembered).
    pub(crate) async fn component(
        &self,
        path: &Path,
        bytes: Vec<u8>,
    ) -> Result<(Component, CacheOutcome), LoadError> {
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let refusals = self.refusals.clone();
        let budget = self.compiler.budget().cloned();
        let bytes = Arc::new(bytes);
        let wasm = bytes.clone();
        // Hashing a MiB and reading a cache entry block for a moment.
        let (key, earlier) = tokio::task::spawn_blocking(move || {
            let key = artifact_key(&engine, &wasm);
            // Without a budget (in process) nothing is refused.
            if let Some(refusal) = budget.and_then(|b| refusals.lookup(&key, &b)) {
                return (key, Err(refusal));
            }
            let hit = cache.and_then(|cache| cache.load(&engine, &key));
            (key, Ok(hit))
        })
        .await
        .map_err(|e| LoadError::Compiler {
            path: path.to_owned(),
            reason: format!("the cache task failed: {e}"),
        })?;
        match earlier {
            Err(refusal) => {
                self.stats
                    .refusals_remembered
                    .fetch_add(1, Ordering::Relaxed);
                return Err(LoadError::Refused {
                    path: path.to_owned(),
                    refusal,
                    remembered: true,
                });
            }
            Ok(Some(component)) => {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(guest = %path.display(), "guest code loaded from the cache");
                return Ok((component, CacheOutcome::Hit));
            }
            Ok(None) => {}
        }

        let started = Instant::now();
        match self.compiler.compile(&self.engine, bytes).await {
            Ok(Compiled { component, code }) => {
                self.stats.compiled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    guest = %path.display(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    budget = %self.compiler.budget().map(|b| b.to_string()).unwrap_or_else(|| "none (in process)".into()),
                    "guest compiled"
                );
                if let Some(cache) = self.cache.clone() {
                    let stored = component.clone();
                    // A failure to store is logged; the guest loads anyway.
                    let _ = tokio::task::spawn_blocking(move || {
                        let code = match code {
                            Some(code) => code,
                            None => match stored.serialize() {
                                Ok(code) => code,
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot serialize a compiled guest for the cache");
                                    return;
                                }
                            },
                        };
                        cache.store_logged(&key, &code);
                    })
                    .await;
                }
                Ok((component, CacheOutcome::Compiled))
            }
            Err(CompileError::Refused(refusal)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let refusals = self.refusals.clone();
                let remembered = refusal.clone();
                let _ =
                    tokio::task::spawn_blocking(move || refusals.remember(&key, &remembered)).await;
                Err(LoadError::Refused {
                    path: path.to_owned(),
                    refusal,
                    remembered: false,
                })
            }
            Err(CompileError::Invalid(reason)) => Err(LoadError::Compile {
                path: path.to_owned(),
                reason,
            }),
            Err(CompileError::Host(reason)) => Err(LoadError::Compiler {
                path: path.to_owned(),
                reason,
            }),
        }
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
