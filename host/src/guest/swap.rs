//! The guest can be replaced without restarting the host: the `.wasm` at `QA_GUEST` (a path
//! in the image or on EFS) is re-checked once `QA_GUEST_TTL_SECS` has passed; a changed file
//! (size or modification time) is compiled in the background and swapped in when it
//! instantiates. Requests already running finish on the guest they started with; a new guest
//! that fails to compile, to link or to instantiate (another contract version, say) is logged
//! and ignored until the file changes again, and the previous guest keeps serving.

use super::{GuestLimits, GuestRuntime};
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
    cache_dir: PathBuf,
    limits: GuestLimits,
    ttl: Duration,
    /// The file's stamp when it was last tried, and when it was last checked.
    seen: Mutex<(Stamp, Instant)>,
    swapping: AtomicBool,
}

impl SwappableGuest {
    pub fn new(runtime: GuestRuntime, path: &Path, cache_dir: &Path, limits: GuestLimits, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(runtime)),
            path: path.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            limits,
            ttl,
            seen: Mutex::new((stamp(path), Instant::now())),
            swapping: AtomicBool::new(false),
        })
    }

    /// The guest to run a request on. Starts a background swap when the file changed.
    pub fn current(self: &Arc<Self>) -> Arc<GuestRuntime> {
        if let Ok(mut seen) = self.seen.lock()
            && seen.1.elapsed() >= self.ttl
        {
            seen.1 = Instant::now();
            let now = stamp(&self.path);
            if now != seen.0 && now.is_some() && !self.swapping.swap(true, Ordering::AcqRel) {
                seen.0 = now;
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.swap());
            }
        }
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self) {
        let started = Instant::now();
        match GuestRuntime::new(&self.path, &self.cache_dir, self.limits) {
            Ok(runtime) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(runtime);
                }
                tracing::info!(guest = %self.path.display(), ms = started.elapsed().as_millis() as u64, "guest swapped");
            }
            Err(error) => tracing::error!(guest = %self.path.display(), %error, "new guest rejected; the previous guest keeps serving"),
        }
        self.swapping.store(false, Ordering::Release);
    }
}
