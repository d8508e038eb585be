//! The guest can be replaced without restarting the host: the `.wasm` at `QA_GUEST` (a path
//! in the image or on EFS, or an `s3://` object) is re-checked once `QA_GUEST_TTL_SECS` has
//! passed; a changed file (size or modification time; for S3, a new ETag, downloaded and
//! verified like a model) is compiled in the background and swapped in when it instantiates.
//! Requests already running finish on the guest they started with; a new guest that fails
//! to compile, to link or to instantiate (a contract version this host does not know, say) is
//! logged and ignored until the file changes again, and the previous guest keeps serving.

use super::{Artifacts, GuestRuntime, GuestSettings};
use crate::models::{ModelSource, S3Source};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

type Stamp = Option<(u64, Option<SystemTime>)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.len(), m.modified().ok()))
}

pub struct SwappableGuest {
    current: RwLock<Arc<GuestRuntime>>,
    path: PathBuf,
    /// Where the guest comes from when it lives in S3 (`path` is then its local copy).
    s3: Option<Arc<S3Source>>,
    /// The S3 version the running guest came from.
    s3_version: Mutex<String>,
    artifacts: Artifacts,
    settings: GuestSettings,
    ttl: Duration,
    /// The file's stamp when it was last tried, and when it was last checked.
    seen: Mutex<(Stamp, Instant)>,
    swapping: AtomicBool,
    /// Check on the next request, whatever the TTL says ([`SwappableGuest::expire`]).
    stale: AtomicBool,
}

impl SwappableGuest {
    pub fn new(
        runtime: Arc<GuestRuntime>,
        path: &Path,
        s3: Option<(Arc<S3Source>, String)>,
        artifacts: Artifacts,
        settings: GuestSettings,
        ttl: Duration,
    ) -> Arc<Self> {
        let (s3, s3_version) = s3.map_or((None, String::new()), |(source, version)| (Some(source), version));
        Arc::new(Self {
            current: RwLock::new(runtime),
            path: path.to_path_buf(),
            s3,
            s3_version: Mutex::new(s3_version),
            artifacts,
            settings,
            ttl,
            seen: Mutex::new((stamp(path), Instant::now())),
            swapping: AtomicBool::new(false),
            stale: AtomicBool::new(false),
        })
    }

    /// The guest to run a request on. Starts a background swap when the file changed.
    pub fn current(self: &Arc<Self>) -> Arc<GuestRuntime> {
        let stale = self.stale.swap(false, Ordering::AcqRel);
        if let Ok(mut seen) = self.seen.lock()
            && (stale || seen.1.elapsed() >= self.ttl)
        {
            seen.1 = Instant::now();
            if self.s3.is_some() {
                if !self.swapping.swap(true, Ordering::AcqRel) {
                    let this = self.clone();
                    tokio::spawn(async move { this.check_s3().await });
                }
            } else {
                let now = stamp(&self.path);
                if now != seen.0 && now.is_some() && !self.swapping.swap(true, Ordering::AcqRel) {
                    seen.0 = now;
                    let this = self.clone();
                    tokio::spawn(async move { this.swap(this.path.clone()).await });
                }
            }
        }
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes the next request check the guest's file or S3 object, whatever the TTL says
    /// (after a SnapStart restore: the guest is as old as the snapshot).
    pub fn expire(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// The client the guest is fetched with, when it lives in S3.
    pub fn s3_connector(&self) -> Option<&Arc<crate::models::S3Connector>> {
        self.s3.as_ref().map(|source| source.connector())
    }

    /// Makes `runtime` (a promoted candidate) serve every request from now on. It serves
    /// until this guest's own file changes, which swaps that file's guest in as usual.
    pub fn promote(&self, runtime: Arc<GuestRuntime>) {
        if let Ok(mut current) = self.current.write() {
            *current = runtime;
        }
    }

    /// Asks S3 for the guest's version; fetches, compiles and swaps in a new one.
    async fn check_s3(self: Arc<Self>) {
        let Some(source) = self.s3.clone() else { return };
        let file = self.path.file_name().map(PathBuf::from).unwrap_or_default();
        match source.fetch().await {
            Ok(local) if self.s3_version.lock().is_ok_and(|v| *v != local.version) => {
                if let Ok(mut version) = self.s3_version.lock() {
                    *version = local.version;
                }
                self.swap(local.dir.join(file)).await;
            }
            Ok(_) => self.swapping.store(false, Ordering::Release),
            Err(error) => {
                tracing::warn!(%error, "guest re-check in S3 failed; the current guest keeps serving");
                self.swapping.store(false, Ordering::Release);
            }
        }
    }

    async fn swap(&self, path: PathBuf) {
        let started = Instant::now();
        match GuestRuntime::load(&path, self.artifacts.clone(), self.settings.clone()).await {
            Ok(runtime) => {
                if let Ok(mut current) = self.current.write() {
                    *current = runtime;
                }
                tracing::info!(guest = %self.path.display(), ms = started.elapsed().as_millis() as u64, "guest swapped");
            }
            Err(error) => tracing::error!(guest = %self.path.display(), %error, "new guest rejected; the previous guest keeps serving"),
        }
        self.swapping.store(false, Ordering::Release);
    }
}

/// When `config.guest_wasm` (or the rollout's candidate) is an `s3://bucket/key` URI,
/// downloads it into the S3 cache (verified, atomically, as models are) and points the setting
/// at the local copy.
pub async fn resolve_guest(config: &mut crate::config::HostConfig) -> Result<(), String> {
    if let Some((path, s3)) = fetch_guest(config, "QA_GUEST", &config.guest_wasm, "_guest").await? {
        config.guest_wasm = path;
        config.guest_s3 = Some(s3);
    }
    let Some(rollout) = config.rollout.as_ref() else { return Ok(()) };
    if let Some((path, s3)) = fetch_guest(config, rollout.setting(), &rollout.candidate, "_candidate").await?
        && let Some(rollout) = config.rollout.as_mut()
    {
        rollout.candidate = path;
        rollout.candidate_s3 = Some(s3);
    }
    Ok(())
}

/// The local copy of the guest at `uri` when it is `s3://bucket/key`, cached under `name`,
/// with its S3 source and version; `None` for a local path.
async fn fetch_guest(
    config: &crate::config::HostConfig,
    setting: &str,
    uri: &Path,
    name: &str,
) -> Result<Option<(PathBuf, (Arc<S3Source>, String))>, String> {
    let Some(object) = uri.to_str().and_then(|s| s.strip_prefix("s3://")) else {
        return Ok(None);
    };
    let (bucket, key) = object
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty() && !k.ends_with('/'))
        .ok_or_else(|| format!("{setting}={} is not s3://bucket/key", uri.display()))?;
    let source = Arc::new(S3Source::single_object(crate::models::S3Connector::new(config.s3.clone()), name, bucket, key));
    let local = source.fetch().await.map_err(|e| format!("{setting} {}: {e}", uri.display()))?;
    let file = key.rsplit('/').next().unwrap_or(key);
    Ok(Some((local.dir.join(file), (source, local.version))))
}
