//! What a guest file is, without running it: size, digest, the contract it was built
//! for, its imports and exports (`wasm-device-plugin inspect`), and precompiling it into
//! the cache (`wasm-device-plugin compile`).

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::cache::CacheOutcome;
use super::engine::Runtime;
use super::loader::LoadError;

/// The export every guest has; its version is the contract version the guest was built for.
const PLUGIN_EXPORT: &str = "wdp:device-plugin/plugin@";

/// A guest file described.
#[derive(Debug)]
pub struct Inspection {
    pub size: u64,
    pub sha256: String,
    /// The contract version of its `plugin` export, if it has one.
    pub contract: Option<String>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl Runtime {
    /// Compiles `path` (size and header checks first) and lists what it imports and exports.
    pub async fn inspect(&self, path: &Path) -> Result<Inspection, LoadError> {
        let bytes = self.read_checked(path).await?;
        let component = Component::new(&self.engine, &bytes).map_err(|e| LoadError::Compile {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let contract = exports
            .iter()
            .find_map(|e| e.strip_prefix(PLUGIN_EXPORT))
            .map(str::to_owned);
        Ok(Inspection {
            size: bytes.len() as u64,
            sha256: Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            contract,
            imports,
            exports,
        })
    }

    /// Compiles `path` into the compiled-guest cache (a no-op when it is there already).
    pub async fn precompile(&self, path: &Path) -> Result<CacheOutcome, LoadError> {
        let bytes = self.read_checked(path).await?;
        let Some(cache) = self.cache.clone() else {
            return Err(LoadError::Compile {
                path: path.to_owned(),
                reason: "no cache directory configured (--cache-dir)".into(),
            });
        };
        let engine = self.engine.clone();
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || {
            cache
                .get_or_compile(&engine, &bytes)
                .map(|(_, outcome)| outcome)
        })
        .await
        .map_err(|e| LoadError::Compile {
            path: owned.clone(),
            reason: format!("compiler task failed: {e}"),
        })?
        .map_err(|e| LoadError::Compile {
            path: owned,
            reason: format!("{e:#}"),
        })
    }
}
