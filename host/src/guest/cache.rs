//! Compiled-guest cache: Cranelift takes seconds on a 3 MB component, deserializing the
//! precompiled artifact takes milliseconds. Artifacts are keyed by the wasm's SHA-256 and
//! the engine's compatibility hash (wasmtime version and settings), written atomically (temporary
//! file, then rename) so a crash never leaves a torn artifact under the final name.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::Engine;
use wasmtime::component::Component;

/// How the component was obtained, for logs and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Deserialized from the precompiled artifact shipped next to the `.wasm`
    /// (`qa-host compile-guest`).
    Shipped,
    /// Deserialized from the cache.
    Cached,
    /// Compiled now (and written to the cache when it is writable).
    Compiled,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("guest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("guest {path} is not a valid component: {reason}")]
    Compile { path: PathBuf, reason: String },
}

/// Where `qa-host compile-guest` puts the artifact for `wasm_path`: beside it, named after the
/// wasm's SHA-256, so an artifact is only ever tried with the exact wasm it was compiled from.
pub fn shipped_artifact_path(wasm_path: &Path, wasm: &[u8]) -> PathBuf {
    let name = wasm_path.file_name().and_then(|n| n.to_str()).unwrap_or("guest.wasm");
    wasm_path.with_file_name(format!("{name}.{}.cwasm", &hex::encode(Sha256::digest(wasm))[..16]))
}

/// Compiles the guest at `wasm_path` for `engine` and writes the artifact beside it.
pub fn write_shipped_artifact(engine: &Engine, wasm_path: &Path) -> Result<PathBuf, CacheError> {
    let wasm = std::fs::read(wasm_path).map_err(|source| CacheError::Read { path: wasm_path.to_path_buf(), source })?;
    let compiled =
        engine.precompile_component(&wasm).map_err(|e| CacheError::Compile { path: wasm_path.to_path_buf(), reason: format!("{e:#}") })?;
    let path = shipped_artifact_path(wasm_path, &wasm);
    write_atomically(&path, &compiled).map_err(|source| CacheError::Read { path: path.clone(), source })?;
    Ok(path)
}

/// Loads the component at `wasm_path`: from the artifact shipped beside it when wasmtime
/// accepts it for this engine (same version, settings and CPU features; checked by
/// `deserialize`), else from `cache_dir`, else by compiling it (and caching the result).
pub fn load_component(engine: &Engine, wasm_path: &Path, cache_dir: &Path) -> Result<(Component, Origin), CacheError> {
    let wasm = std::fs::read(wasm_path).map_err(|source| CacheError::Read { path: wasm_path.to_path_buf(), source })?;
    let shipped = shipped_artifact_path(wasm_path, &wasm);
    if shipped.is_file() {
        // SAFETY: the artifact's name carries the SHA-256 of this wasm, it sits beside the
        // wasm in the deployment, and wasmtime refuses artifacts built for another engine.
        match unsafe { Component::deserialize_file(engine, &shipped) } {
            Ok(component) => return Ok((component, Origin::Shipped)),
            Err(e) => {
                tracing::warn!(artifact = %shipped.display(), error = %e, "shipped compiled guest does not fit this engine; ignoring it")
            }
        }
    }
    let artifact = cache_dir.join(format!("guest-{}.cwasm", cache_key(engine, &wasm)));
    if artifact.is_file() {
        // SAFETY: the artifact was written by `precompile_component` of an engine with the
        // same version and configuration (both are in its name), in a directory only this
        // host writes; wasmtime checks the header against this engine again.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => return Ok((component, Origin::Cached)),
            Err(e) => tracing::warn!(artifact = %artifact.display(), error = %e, "ignoring unusable compiled guest"),
        }
    }
    let started = Instant::now();
    let compiled =
        engine.precompile_component(&wasm).map_err(|e| CacheError::Compile { path: wasm_path.to_path_buf(), reason: format!("{e:#}") })?;
    tracing::info!(ms = started.elapsed().as_millis() as u64, "compiled guest");
    if let Err(e) = write_atomically(&artifact, &compiled) {
        tracing::warn!(dir = %cache_dir.display(), error = %e, "compiled guest not cached");
    }
    // SAFETY: these bytes were produced by `precompile_component` of this very engine.
    let component = unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|e| CacheError::Compile { path: wasm_path.to_path_buf(), reason: format!("{e:#}") })?;
    Ok((component, Origin::Compiled))
}

fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut digest = hasher.0;
    digest.update(wasm);
    hex::encode(&digest.finalize()[..16])
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact"), std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Feeds `Hash` output into SHA-256, so the key is stable across processes (unlike
/// `DefaultHasher`, which is randomly seeded).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
