//! Where compiled guests come from. A precompiled artifact (`.cwasm`) is native code the host
//! maps and runs without checks of its own, so it is used only from places only the operator
//! writes:
//! - beside the `.wasm` when that directory is where the operator ships code: the
//!   executable's directory or `LAMBDA_TASK_ROOT` (the image), as `qa-host compile-guest`
//!   writes it (`<name>.wasm.<sha256-16>.cwasm`), provided that directory, every directory
//!   above it and the artifact are owned by root or this host's user and no one else can
//!   write them (a directory above may be writable by others if it is sticky, as `/tmp` is);
//! - anywhere beside the `.wasm` (EFS, say) when it carries a valid signature
//!   (`<artifact>.sig`, HMAC-SHA256 under `QA_GUEST_ARTIFACT_KEY`, over the wasm's SHA-256,
//!   the artifact's kind and the artifact's SHA-256): proof that it was compiled from that
//!   wasm, as that kind, by someone holding the key (a signed snapshot cannot pass as the
//!   plain guest);
//! - the compile cache, a directory this host created or owns that no one else can write,
//!   bounded in bytes (`QA_CACHE_MB`): after each write the least recently used artifacts are
//!   removed until it fits, never one this process has loaded.
//!
//! Anything else (a `.cwasm` beside a guest in S3 or on EFS without a signature, a cache
//! directory another user owns or can write) is ignored with a warning, and the guest is
//! compiled instead. Artifacts are keyed by the input's SHA-256 and the engine's compatibility
//! hash, and written atomically (temporary file, then rename).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained, for logs, metrics and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The artifact shipped beside the `.wasm` in a trusted directory.
    Shipped,
    /// A signed artifact beside the `.wasm`.
    Signed,
    /// Deserialized from the compile cache.
    Cached,
    /// Compiled now (and written to the cache when there is one).
    Compiled,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("guest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("guest {path} is not a valid component: {reason}")]
    Compile { path: PathBuf, reason: String },
}

/// The variable holding the key that signs artifacts shipped outside trusted directories.
pub const SIGNING_KEY_VAR: &str = "QA_GUEST_ARTIFACT_KEY";

/// The compile cache's size bound when none is configured (`QA_CACHE_MB`): the shipped guest,
/// its instrumented build and a snapshot per model version take about 40 MB for one model.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Where compiled guests may be read from and written to.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// The compile cache; `None` when the configured directory is not safe to use.
    cache_dir: Option<PathBuf>,
    /// Directories where the operator ships code (canonical).
    trusted_dirs: Vec<PathBuf>,
    signing_key: Option<Vec<u8>>,
    /// Bytes the compile cache may hold (`QA_CACHE_MB`).
    cache_bytes: u64,
    /// Cached artifacts this process loaded or wrote: in use (or recently so), never pruned.
    loaded: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Artifacts {
    /// What a deployed host trusts: `cache_dir` as the compile cache (if it is private, see
    /// [`Artifacts::new`]), the executable's directory and `LAMBDA_TASK_ROOT` as places the
    /// operator ships code, and the signing key in [`SIGNING_KEY_VAR`].
    pub fn from_env(cache_dir: &Path) -> Self {
        let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        let task_root = std::env::var_os("LAMBDA_TASK_ROOT").map(PathBuf::from);
        Self::new(cache_dir, exe_dir.into_iter().chain(task_root).collect(), Self::key_from_env())
    }

    /// Uses `cache_dir` as the compile cache if this host owns it and no one else can write
    /// it (creating it owner-only if missing); otherwise caching is off, with a warning.
    /// Artifacts beside a guest are trusted in `trusted_dirs`, or elsewhere when signed with
    /// `signing_key`.
    pub fn new(cache_dir: &Path, trusted_dirs: Vec<PathBuf>, signing_key: Option<Vec<u8>>) -> Self {
        let cache_dir = match private_dir(cache_dir) {
            Ok(()) => Some(cache_dir.to_path_buf()),
            Err(reason) => {
                tracing::warn!(dir = %cache_dir.display(), reason, "compile cache not used; guests are compiled at every start");
                None
            }
        };
        let trusted_dirs = trusted_dirs
            .into_iter()
            .filter_map(|dir| {
                let canonical = dir.canonicalize().ok()?;
                match operator_only(&canonical, true) {
                    Ok(()) => Some(canonical),
                    Err(reason) => {
                        tracing::warn!(dir = %dir.display(), reason, "precompiled guests in this directory are not trusted");
                        None
                    }
                }
            })
            .collect();
        Self { cache_dir, trusted_dirs, signing_key, cache_bytes: DEFAULT_CACHE_BYTES, loaded: Default::default() }
    }

    /// The compile cache bounded to `bytes` (`QA_CACHE_MB`).
    pub fn with_cache_limit(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The signing key from [`SIGNING_KEY_VAR`], if set.
    pub fn key_from_env() -> Option<Vec<u8>> {
        std::env::var(SIGNING_KEY_VAR).ok().filter(|k| !k.is_empty()).map(String::into_bytes)
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Loads the guest at `wasm_path`: a shipped or signed artifact beside it, else the
    /// compile cache, else compiles it (and caches the result).
    pub fn load_guest(&self, engine: &Engine, wasm_path: &Path, wasm: &[u8]) -> Result<(Component, Origin), ArtifactError> {
        match self.shipped(engine, wasm_path, wasm, None) {
            Some(found) => Ok(found),
            None => self.load_or_compile(engine, wasm, wasm_path),
        }
    }

    /// The artifact of `kind` shipped beside the guest (see [`artifact_path`]), if there is
    /// one this host may trust and that fits this engine.
    pub fn shipped(&self, engine: &Engine, wasm_path: &Path, wasm: &[u8], kind: Option<&str>) -> Option<(Component, Origin)> {
        let beside = artifact_path(wasm_path, wasm, kind);
        if !beside.is_file() {
            return None;
        }
        match self.trust_beside(wasm_path, wasm, &beside, kind) {
            // SAFETY: the artifact is in a directory only the operator writes, or signed with
            // the operator's key over this wasm and these bytes; wasmtime refuses artifacts
            // built for another engine or version.
            Ok(origin) => match unsafe { Component::deserialize_file(engine, &beside) } {
                Ok(component) => return Some((component, origin)),
                Err(e) => {
                    tracing::warn!(artifact = %beside.display(), error = %e, "shipped compiled guest does not fit this engine; ignoring it")
                }
            },
            Err(reason) => {
                tracing::warn!(artifact = %beside.display(), reason, "compiled guest beside the wasm is not trusted; ignoring it")
            }
        }
        None
    }

    fn trust_beside(&self, wasm_path: &Path, wasm: &[u8], artifact: &Path, kind: Option<&str>) -> Result<Origin, String> {
        let dir = artifact.parent().and_then(|d| d.canonicalize().ok()).ok_or("its directory cannot be resolved")?;
        if self.trusted_dirs.contains(&dir) {
            // Checked again at use: a trusted directory stays trusted only while only the
            // operator can change it, and the artifact too.
            operator_only(&dir.join(artifact.file_name().unwrap_or_default()), false)?;
            return Ok(Origin::Shipped);
        }
        let Some(key) = &self.signing_key else {
            return Err(format!(
                "{} is not where this host ships code (its executable's directory or LAMBDA_TASK_ROOT) and {SIGNING_KEY_VAR} is not set",
                dir.display()
            ));
        };
        let signature = std::fs::read_to_string(signature_path(artifact)).map_err(|e| format!("no signature: {e}"))?;
        let signature = hex::decode(signature.trim()).map_err(|_| "its signature is not hex".to_string())?;
        let bytes = std::fs::read(artifact).map_err(|e| e.to_string())?;
        // `verify_slice` compares in constant time.
        mac(key, wasm, kind, &bytes)
            .verify_slice(&signature)
            .map(|()| Origin::Signed)
            .map_err(|_| format!("its signature does not match {} and this key", wasm_path.display()))
    }

    /// A component for `bytes` from the compile cache, or compiled now (and cached).
    pub fn load_or_compile(&self, engine: &Engine, bytes: &[u8], what: &Path) -> Result<(Component, Origin), ArtifactError> {
        let key = self.key(engine, &[bytes]);
        match self.cached(engine, &key) {
            Some(component) => Ok((component, Origin::Cached)),
            None => self.compile_into_cache(engine, bytes, &key, what).map(|c| (c, Origin::Compiled)),
        }
    }

    /// The cache key of a component made from `parts` for `engine`.
    pub fn key(&self, engine: &Engine, parts: &[&[u8]]) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        parts_key(hasher.0, parts)
    }

    fn artifact(&self, key: &str) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|dir| dir.join(format!("guest-{key}.cwasm")))
    }

    /// The cached component under `key`, if there is a usable one (marked as just used).
    pub fn cached(&self, engine: &Engine, key: &str) -> Option<Component> {
        let artifact = self.artifact(key).filter(|a| a.is_file())?;
        self.mark_loaded(&artifact);
        // SAFETY: the cache directory is owned by this host's user and writable by no one
        // else (checked at start), so the artifact was written by `precompile_component` of an
        // engine with this compatibility hash (in its key); wasmtime checks the header
        // against this engine again.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), error = %e, "ignoring unusable compiled guest");
                None
            }
        }
    }

    /// Compiles `bytes` and keeps the result in the cache under `key`.
    pub fn compile_into_cache(&self, engine: &Engine, bytes: &[u8], key: &str, what: &Path) -> Result<Component, ArtifactError> {
        let started = Instant::now();
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|e| ArtifactError::Compile { path: what.to_path_buf(), reason: format!("{e:#}") })?;
        tracing::info!(what = %what.display(), ms = started.elapsed().as_millis() as u64, "compiled guest");
        if let Some(artifact) = self.artifact(key) {
            if compiled.len() as u64 > self.cache_bytes {
                tracing::warn!(artifact = %artifact.display(), bytes = compiled.len(), limit = self.cache_bytes, "compiled guest larger than the compile cache (QA_CACHE_MB); not cached");
            } else if let Err(e) = write_atomically(&artifact, &compiled) {
                tracing::warn!(artifact = %artifact.display(), error = %e, "compiled guest not cached");
            } else {
                self.mark_loaded(&artifact);
                self.prune();
            }
        }
        // SAFETY: these bytes were produced by `precompile_component` of this very engine.
        unsafe { Component::deserialize(engine, &compiled) }
            .map_err(|e| ArtifactError::Compile { path: what.to_path_buf(), reason: format!("{e:#}") })
    }
}

impl Artifacts {
    /// Remembers that this process uses `artifact`, and marks it as just used (its mtime) for
    /// least-recently-used pruning, here and in other processes sharing the cache.
    fn mark_loaded(&self, artifact: &Path) {
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.insert(artifact.to_path_buf());
        }
        if let Err(e) = std::fs::File::options().append(true).open(artifact).and_then(|f| f.set_modified(SystemTime::now())) {
            tracing::debug!(artifact = %artifact.display(), error = %e, "could not mark the compiled guest as used");
        }
    }

    /// Removes the least recently used artifacts until the cache holds at most its bound,
    /// never one this process loaded (which may be mapped and running). Temporary files of
    /// writes in progress are left alone.
    pub fn prune(&self) {
        let Some(dir) = &self.cache_dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut artifacts: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("guest-") && n.ends_with(".cwasm")))
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
                Some((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = artifacts.iter().map(|(_, bytes, _)| bytes).sum();
        if total <= self.cache_bytes {
            return;
        }
        artifacts.sort();
        let loaded = self.loaded.lock().map(|l| l.clone()).unwrap_or_default();
        for (_, bytes, path) in artifacts {
            if total <= self.cache_bytes {
                break;
            }
            if loaded.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= bytes;
                    tracing::info!(artifact = %path.display(), bytes, "pruned from the compile cache (least recently used)");
                }
                // Another process sharing the cache pruned it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= bytes,
                Err(e) => tracing::warn!(artifact = %path.display(), error = %e, "could not prune the compile cache"),
            }
        }
        if total > self.cache_bytes {
            tracing::warn!(bytes = total, limit = self.cache_bytes, "the compile cache is over its bound with artifacts in use");
        }
    }
}

/// Where `qa-host compile-guest` puts an artifact for `wasm_path`: beside it, named after the
/// wasm's SHA-256, so an artifact is only ever tried with the exact wasm it was compiled from:
/// `<name>.wasm.<sha256-16>.cwasm` for the guest itself, `<name>.wasm.<sha256-16>.<kind>.cwasm`
/// for what is made from it (the instrumented guest, a model's snapshot).
/// A name for what is made from `parts` alone, for any engine: shipped artifacts are named so,
/// since the machine that compiles them (`compile-guest`, maybe for another target) is not the
/// one that loads them; whether that one's engine accepts an artifact is wasmtime's check.
pub fn content_key(parts: &[&[u8]]) -> String {
    parts_key(Sha256::new(), parts)
}

fn parts_key(mut digest: Sha256, parts: &[&[u8]]) -> String {
    for part in parts {
        // Each part's length first, so parts cannot run into each other.
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    hex::encode(&digest.finalize()[..16])
}

pub fn artifact_path(wasm_path: &Path, wasm: &[u8], kind: Option<&str>) -> PathBuf {
    let name = wasm_path.file_name().and_then(|n| n.to_str()).unwrap_or("guest.wasm");
    let hash = &hex::encode(Sha256::digest(wasm))[..16];
    match kind {
        Some(kind) => wasm_path.with_file_name(format!("{name}.{hash}.{kind}.cwasm")),
        None => wasm_path.with_file_name(format!("{name}.{hash}.cwasm")),
    }
}

/// The guest's own shipped artifact (see [`artifact_path`]).
pub fn shipped_artifact_path(wasm_path: &Path, wasm: &[u8]) -> PathBuf {
    artifact_path(wasm_path, wasm, None)
}

fn signature_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// HMAC-SHA256 under `key` of the wasm's SHA-256, the artifact's kind (empty for the guest
/// itself) and the artifact's SHA-256. The kind is inside the MAC so a signed artifact of one
/// kind (a model's snapshot) cannot be renamed into another (the plain guest).
fn mac(key: &[u8], wasm: &[u8], kind: Option<&str>, artifact: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the error case cannot happen.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"qa-guest-artifact-v2\0");
    mac.update(&Sha256::digest(wasm));
    let kind = kind.unwrap_or_default().as_bytes();
    // Its length first, so the kind cannot run into the digest after it.
    mac.update(&(kind.len() as u64).to_le_bytes());
    mac.update(kind);
    mac.update(&Sha256::digest(artifact));
    mac
}

fn sign(key: &[u8], wasm: &[u8], kind: Option<&str>, artifact: &[u8]) -> String {
    hex::encode(mac(key, wasm, kind, artifact).finalize().into_bytes())
}

/// Compiles the guest at `wasm_path` for `engine` and writes the artifact beside it, and its
/// signature when `key` is given. Returns the artifact's path.
pub fn write_shipped_artifact(engine: &Engine, wasm_path: &Path, key: Option<&[u8]>) -> Result<PathBuf, ArtifactError> {
    let wasm = std::fs::read(wasm_path).map_err(|source| ArtifactError::Read { path: wasm_path.to_path_buf(), source })?;
    write_shipped(engine, wasm_path, &wasm, None, &wasm, key)
}

/// Compiles `bytes` (the guest, or something made from it) and writes the artifact of `kind`
/// beside the guest, signed over the guest's wasm when `key` is given.
pub fn write_shipped(
    engine: &Engine,
    wasm_path: &Path,
    wasm: &[u8],
    kind: Option<&str>,
    bytes: &[u8],
    key: Option<&[u8]>,
) -> Result<PathBuf, ArtifactError> {
    let compiled = engine
        .precompile_component(bytes)
        .map_err(|e| ArtifactError::Compile { path: wasm_path.to_path_buf(), reason: format!("{e:#}") })?;
    let path = artifact_path(wasm_path, wasm, kind);
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Read { path, source }
    };
    write_atomically(&path, &compiled).map_err(write_error(&path))?;
    if let Some(key) = key {
        let signature = signature_path(&path);
        write_atomically(&signature, sign(key, wasm, kind, &compiled).as_bytes()).map_err(write_error(&signature))?;
    }
    Ok(path)
}

/// Creates `dir` owner-only if missing; refuses one that is a symbolic link, is owned by
/// another user, or that group or others can write.
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("it is not a directory (or is a symbolic link)".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!("it is owned by uid {}, not this process's uid {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("group or others can write it (mode {:o})", meta.mode() & 0o777));
    }
    Ok(())
}

/// Whether only the operator can change `path`: it and every directory above it are owned by
/// root or this process's user, and no one else can write them (a directory above may be
/// writable by others if it is sticky, since they cannot then rename or remove what is in
/// it). `dir` says whether `path` is itself a directory (else a file whose directories are
/// checked with it).
fn operator_only(path: &Path, dir: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    const STICKY: u32 = 0o1000;
    let me = rustix::process::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!("{} is a symbolic link", path.display()));
    }
    let mut checked = vec![(path.to_path_buf(), meta, false)];
    let start = if dir { Some(path) } else { path.parent() };
    if !dir && let Some(parent) = start {
        let meta = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        checked.push((parent.to_path_buf(), meta, false));
    }
    for ancestor in start.into_iter().flat_map(Path::ancestors).skip(1) {
        let meta = std::fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        checked.push((ancestor.to_path_buf(), meta, true));
    }
    for (path, meta, above) in checked {
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!("{} is owned by uid {}, neither root nor this process's uid {me}", path.display(), meta.uid()));
        }
        let writable_by_others = meta.mode() & 0o022 != 0;
        if writable_by_others && !(above && meta.mode() & STICKY != 0) {
            return Err(format!("group or others can write {} (mode {:o})", path.display(), meta.mode() & 0o7777));
        }
    }
    Ok(())
}

/// Writes `bytes` to a temporary file unique to this write (process and a counter: two
/// threads of one process may write the same artifact at once), then renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact");
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{write}.tmp", std::process::id()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn cache_directories_others_can_write_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        assert_eq!(private_dir(&fresh), Ok(()));
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&open).unwrap_err().contains("777"));
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(private_dir(&link).unwrap_err().contains("symbolic"));
        assert!(Artifacts::new(&open, Vec::new(), None).cache_dir().is_none());
    }

    #[test]
    fn cache_directories_another_user_owns_are_refused() {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        // Run as root, give a private directory away; otherwise `/`, which root owns.
        let root = tempfile::tempdir().unwrap();
        let theirs = if me == 0 {
            let dir = root.path().join("theirs");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            rustix::fs::chown(&dir, Some(rustix::process::Uid::from_raw(65534)), None).unwrap();
            dir
        } else {
            std::path::PathBuf::from("/")
        };
        assert_ne!(std::fs::metadata(&theirs).unwrap().uid(), me);
        let refusal = private_dir(&theirs).unwrap_err();
        assert!(refusal.contains("owned by uid") && refusal.contains(&me.to_string()), "{refusal}");
        assert!(Artifacts::new(&theirs, Vec::new(), None).cache_dir().is_none());
    }

    /// A signed artifact of one kind (a model's snapshot, here compiled from another
    /// component) renamed, with its signature, to the plain guest's artifact: the signature
    /// names its kind, so it is refused; under its own name it is used.
    #[test]
    fn a_signed_snapshot_cannot_pass_as_the_plain_guest() {
        let engine = Engine::new(&crate::guest::engine_config()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wasm_path = dir.path().join("guest.wasm");
        let wasm = wat::parse_str("(component)").unwrap();
        std::fs::write(&wasm_path, &wasm).unwrap();
        let other = &wat::parse_str("(component (core module))").unwrap();
        let key = b"operator key";
        let snapshot = write_shipped(&engine, &wasm_path, &wasm, Some("prepared-0123"), other, Some(key)).unwrap();
        let artifacts = Artifacts::new(&dir.path().join("cache"), Vec::new(), Some(key.to_vec()));
        let found = artifacts.shipped(&engine, &wasm_path, &wasm, Some("prepared-0123")).map(|(_, origin)| origin);
        assert_eq!(found, Some(Origin::Signed), "under its own kind the signed snapshot is used");
        let plain = artifact_path(&wasm_path, &wasm, None);
        std::fs::rename(&snapshot, &plain).unwrap();
        std::fs::rename(signature_path(&snapshot), signature_path(&plain)).unwrap();
        assert!(artifacts.shipped(&engine, &wasm_path, &wasm, None).is_none(), "a snapshot's signature does not make it the guest");
    }

    /// Past its bound the cache drops its least recently used artifacts first, never one this
    /// process loaded, and only its own artifact files.
    #[test]
    fn the_compile_cache_is_pruned_least_recently_used_first_sparing_what_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path(), Vec::new(), None).with_cache_limit(250);
        let age = |path: &Path, secs: u64| {
            let when = SystemTime::now() - std::time::Duration::from_secs(secs);
            std::fs::File::options().append(true).open(path).unwrap().set_modified(when).unwrap();
        };
        let write = |name: &str, secs: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, [0u8; 100]).unwrap();
            age(&path, secs);
            path
        };
        let in_use = write("guest-in-use.cwasm", 0);
        artifacts.mark_loaded(&in_use);
        // Loading marks an artifact as just used.
        let modified = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
        assert!(modified(&in_use) > SystemTime::now() - std::time::Duration::from_secs(60));
        // Loaded long ago and still in use: the least recently used of all.
        age(&in_use, 400);
        let old = write("guest-old.cwasm", 300);
        let recent = write("guest-recent.cwasm", 200);
        let newest = write("guest-newest.cwasm", 100);
        let other = write("not-an-artifact", 500);
        artifacts.prune();
        assert!(in_use.exists(), "in use, though the least recently used");
        assert!(!old.exists() && !recent.exists(), "the least recently used not in use go first, until 250 bytes are left");
        assert!(newest.exists() && other.exists());
    }

    /// Directories where the operator ships code are trusted only while only root or this
    /// user can change them and every directory above them (sticky ones, like `/tmp`, aside);
    /// an artifact in them, likewise.
    #[test]
    fn trusted_directories_and_their_artifacts_must_be_the_operator_s_alone() {
        let root = tempfile::tempdir().unwrap();
        let set_mode = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let deploy = root.path().join("deploy");
        std::fs::create_dir(&deploy).unwrap();
        set_mode(&deploy, 0o755);
        assert_eq!(operator_only(&deploy, true), Ok(()), "under /tmp, which is sticky");
        assert_eq!(Artifacts::new(&root.path().join("cache"), vec![deploy.clone()], None).trusted_dirs.len(), 1);
        set_mode(&deploy, 0o775);
        assert!(operator_only(&deploy, true).unwrap_err().contains("775"));
        assert!(Artifacts::new(&root.path().join("cache"), vec![deploy.clone()], None).trusted_dirs.is_empty());
        set_mode(&deploy, 0o755);
        // A directory above that others may write (not sticky): they could swap `deploy`.
        set_mode(root.path(), 0o777);
        assert!(operator_only(&deploy, true).unwrap_err().contains("777"));
        set_mode(root.path(), 0o1777);
        assert_eq!(operator_only(&deploy, true), Ok(()));
        set_mode(root.path(), 0o700);
        let artifact = deploy.join("guest.wasm.0123.cwasm");
        std::fs::write(&artifact, b"native").unwrap();
        set_mode(&artifact, 0o644);
        assert_eq!(operator_only(&artifact, false), Ok(()));
        set_mode(&artifact, 0o666);
        assert!(operator_only(&artifact, false).unwrap_err().contains("666"));
        set_mode(&artifact, 0o644);
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&deploy, Some(rustix::process::Uid::from_raw(65534)), None).unwrap();
            assert!(operator_only(&artifact, false).unwrap_err().contains("owned by uid 65534"));
        }
    }

    #[test]
    fn signatures_bind_the_wasm_the_kind_and_the_artifact() {
        let signature = sign(b"key", b"wasm", None, b"native");
        assert_eq!(signature, sign(b"key", b"wasm", None, b"native"));
        assert_ne!(signature, sign(b"key", b"other wasm", None, b"native"));
        assert_ne!(signature, sign(b"key", b"wasm", None, b"other native"));
        assert_ne!(signature, sign(b"other key", b"wasm", None, b"native"));
        let snapshot = sign(b"key", b"wasm", Some("prepared-0123"), b"native");
        assert_ne!(signature, snapshot, "the same bytes signed as a snapshot are not signed as the guest");
        assert_ne!(snapshot, sign(b"key", b"wasm", Some("instrumented"), b"native"));
        assert_ne!(sign(b"key", b"wasm", Some(""), b"native"), sign(b"key", b"wasm", Some("x"), b"native"));
    }
}
