//! The on-disk cache of compiled plugins. Compiling a component with Cranelift takes
//! from tens of milliseconds to seconds (interpreter-based plugins are large); the
//! native artifact is written once under
//! `<cache-dir>/<sha256 of the component>-<engine compatibility key>.cwasm` and reused on
//! every later load, across restarts. The engine key is a sha256 of
//! `Engine::precompile_compatibility_hash`, so a wasmtime upgrade or a different engine
//! configuration uses fresh files instead of loading incompatible code.
//!
//! Loading native code is `unsafe` in wasmtime because a forged file could run anything:
//! this module only ever deserializes files it wrote itself into the operator's cache
//! directory (written to a temporary name, then renamed, so a crash never leaves a torn
//! file under the final name), and a file that fails to load is deleted and rebuilt.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

/// Whether a load was served from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The compiled artifact was on disk and loaded without compiling.
    Hit,
    /// The component was compiled and the artifact written to disk.
    Miss,
    /// No cache directory is configured; the component was compiled in memory.
    Disabled,
}

/// The compile cache of one engine.
pub(crate) struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

/// Feeds `Hash` output into sha256, giving a key that is stable across processes (unlike
/// `DefaultHasher`, whose algorithm is unspecified).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..12]);
        Self { dir, engine_key }
    }

    fn artifact_path(&self, dir: &Path, digest: &str) -> PathBuf {
        dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Returns the compiled component for `bytes` (whose sha256 is `digest`), from the
    /// cache when possible. Blocking: call it from a blocking-capable context.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheOutcome), PluginError> {
        let Some(dir) = &self.dir else {
            return Ok((compile(engine, bytes)?, CacheOutcome::Disabled));
        };
        let path = self.artifact_path(dir, digest);
        if path.is_file() {
            match load_artifact(engine, &path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "discarding unreadable compiled plugin; recompiling");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let artifact =
            engine
                .precompile_component(bytes)
                .map_err(|error| PluginError::Invalid {
                    reason: format!("{error:#}"),
                })?;
        let component = load_artifact_bytes(engine, &artifact)?;
        if let Err(error) = write_atomically(dir, &path, &artifact) {
            // The plugin still works; only the next start pays for compiling again.
            tracing::warn!(dir = %dir.display(), %error, "could not write the compile cache");
        }
        Ok((component, CacheOutcome::Miss))
    }
}

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, PluginError> {
    Component::new(engine, bytes).map_err(|error| PluginError::Invalid {
        reason: format!("{error:#}"),
    })
}

#[allow(unsafe_code)]
fn load_artifact(engine: &Engine, path: &Path) -> Result<Component, String> {
    // SAFETY: `path` is in the operator's cache directory and was written by
    // `write_atomically` below from `Engine::precompile_component` output; wasmtime checks
    // the header and engine compatibility and errors on a mismatch.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|error| format!("{error:#}"))
}

#[allow(unsafe_code)]
fn load_artifact_bytes(engine: &Engine, artifact: &[u8]) -> Result<Component, PluginError> {
    // SAFETY: `artifact` was produced by `Engine::precompile_component` of this very
    // engine a moment ago, in this process.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|error| PluginError::Internal {
        reason: format!("loading a freshly compiled plugin failed: {error:#}"),
    })
}

fn write_atomically(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("artifact"),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::write(&temporary, artifact)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}
