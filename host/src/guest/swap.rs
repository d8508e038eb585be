//! The guest can be replaced without restarting the host: the `.wasm` at `QA_GUEST` (a path
//! in the image or on EFS, or an `s3://` object) is re-checked once `QA_GUEST_TTL_SECS` has
//! passed; a changed file (size or modification time; for S3, a new ETag, downloaded and
//! verified like a model) is compiled in the background and swapped in when it instantiates.
//! Requests already running finish on the guest they started with; a new guest that fails
//! to compile, to link or to instantiate (a contract version this host does not know, say) is
//! logged and ignored until the file changes again, and the previous guest keeps serving.

use super::{Artifacts, GuestRuntime, GuestSettings};
use crate::models::{ModelSource, S3Connector, S3Settings, S3Source, SourceError};
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
    pub fn new(runtime: Arc<GuestRuntime>, local: LocalGuest, artifacts: Artifacts, settings: GuestSettings, ttl: Duration) -> Arc<Self> {
        let LocalGuest { path, s3 } = local;
        let (s3, s3_version) = s3.map_or((None, String::new()), |(source, version)| (Some(source), version));
        Arc::new(Self {
            current: RwLock::new(runtime),
            seen: Mutex::new((stamp(&path), Instant::now())),
            path,
            s3,
            s3_version: Mutex::new(s3_version),
            artifacts,
            settings,
            ttl,
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

/// Where a guest component comes from (`QA_GUEST`, or a candidate's setting): a local file,
/// or an S3 object, fetched at start-up and re-checked like a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestLocation {
    File(PathBuf),
    S3 { bucket: String, key: String },
}

impl std::str::FromStr for GuestLocation {
    type Err = &'static str;

    /// `s3://bucket/key` (an object, not a prefix), or a path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(object) = text.strip_prefix("s3://") else {
            return Ok(Self::File(PathBuf::from(text)));
        };
        object
            .split_once('/')
            .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty() && !key.ends_with('/'))
            .map(|(bucket, key)| Self::S3 { bucket: bucket.to_string(), key: key.to_string() })
            .ok_or("a path, or s3://bucket/key naming one object")
    }
}

impl std::fmt::Display for GuestLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// A guest on local disk, ready to load: the file itself, or the local copy of its S3 object
/// with the source and the version it came from.
#[derive(Clone)]
pub struct LocalGuest {
    pub path: PathBuf,
    pub s3: Option<(Arc<S3Source>, String)>,
}

/// Why a guest in S3 could not be fetched.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {source}")]
pub struct FetchError {
    location: String,
    #[source]
    source: SourceError,
}

impl GuestLocation {
    /// The guest on local disk: a file as it is; an S3 object downloaded into the S3 cache
    /// under `cache_name` (verified, and published atomically, as models are).
    pub async fn fetch(&self, s3: &S3Settings, cache_name: &str) -> Result<LocalGuest, FetchError> {
        let (bucket, key) = match self {
            Self::File(path) => return Ok(LocalGuest { path: path.clone(), s3: None }),
            Self::S3 { bucket, key } => (bucket, key),
        };
        let source = Arc::new(S3Source::single_object(S3Connector::new(s3.clone()), cache_name, bucket, key));
        let local = source.fetch().await.map_err(|source| FetchError { location: self.to_string(), source })?;
        let file = key.rsplit('/').next().unwrap_or(key);
        Ok(LocalGuest { path: local.dir.join(file), s3: Some((source, local.version)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_is_a_path_or_one_s3_object() {
        assert_eq!("/opt/qa-guest.wasm".parse(), Ok(GuestLocation::File("/opt/qa-guest.wasm".into())));
        assert_eq!("guests/next.wasm".parse(), Ok(GuestLocation::File("guests/next.wasm".into())));
        let s3: GuestLocation = "s3://bucket/guests/next.wasm".parse().unwrap();
        assert_eq!(s3, GuestLocation::S3 { bucket: "bucket".into(), key: "guests/next.wasm".into() });
        assert_eq!(s3.to_string(), "s3://bucket/guests/next.wasm");
        for prefix_or_nothing in ["s3://bucket", "s3://bucket/", "s3://bucket/guests/", "s3:///key.wasm"] {
            assert!(prefix_or_nothing.parse::<GuestLocation>().is_err(), "{prefix_or_nothing}");
        }
    }
}
