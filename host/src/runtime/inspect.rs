//! What a guest file is, without running it: size, digest, the contract it was built
//! for, its imports and exports (`wasm-device-plugin inspect`), and precompiling it into
//! the cache (`wasm-device-plugin compile`).

use std::path::Path;

use sha2::{Digest, Sha256};

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
    /// Compiles `path` (size and header checks first; within the compile budget, and
    /// from or into the cache, as a load would) and lists what it imports and exports.
    pub async fn inspect(&self, path: &Path) -> Result<Inspection, LoadError> {
        let bytes = self.read_checked(path).await?;
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let size = bytes.len() as u64;
        let (component, _) = self.component(path, bytes).await?;
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
            size,
            sha256,
            contract,
            imports,
            exports,
        })
    }

    /// Compiles `path` into the compiled-guest cache (a no-op when it is there already),
    /// within the compile budget.
    pub async fn precompile(&self, path: &Path) -> Result<CacheOutcome, LoadError> {
        let bytes = self.read_checked(path).await?;
        if self.cache.is_none() {
            return Err(LoadError::Compile {
                path: path.to_owned(),
                reason: "no cache directory configured (--cache-dir)".into(),
            });
        }
        self.component(path, bytes)
            .await
            .map(|(_, outcome)| outcome)
    }
}
