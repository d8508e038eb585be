//! The model cache: one slot per model name. A model is fetched from its source and loaded on
//! first use (concurrent first requests wait for one load), re-checked against its source in
//! the background once its TTL passes (stale-while-revalidate), and evicted least recently used
//! first when on-demand models exceed their budget. Requests hold the [`LoadedModel`] they
//! started with, so a replacement or an eviction never pulls a model from under one.

use crate::guest::GuestModel;
use crate::models::{ModelCatalog, ModelSource, SourceError, VersionLease};
use crate::nn::onnx::OnnxBackend;
use crate::nn::{Call, Model, NnError, Priority};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why the cache could not give a model.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No model of that name is configured.
    #[error("unknown model {name:?}; available: {available}")]
    Unknown { name: String, available: String },
    /// Its source could not give its files.
    #[error("model {name:?}: {source}")]
    Source {
        name: String,
        #[source]
        source: SourceError,
    },
    /// Its files arrived, and their directory cannot be read.
    #[error("model {name:?}: the model's directory: {source}")]
    Directory {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime refused it, or it failed the host's checks.
    #[error("model {name:?} failed to load: {source}")]
    Invalid {
        name: String,
        #[source]
        source: NnError,
    },
    /// The thread loading it ended without a result.
    #[error("the model loader: {0}")]
    Loader(#[source] tokio::task::JoinError),
    #[error("the model cache: {0}")]
    Internal(&'static str),
}

/// What runs when a model version is loaded, before requests use it (the service prepares the
/// guest for it).
pub trait OnLoad: Send + Sync + 'static {
    fn loaded<'a>(&'a self, name: &'a str, model: &'a LoadedModel) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// A model ready for inference, shared by all requests (and kept alive by each request that
/// uses it, past a replacement or an eviction).
pub struct LoadedModel {
    pub graph: Arc<dyn Model>,
    /// Where its files are (canonical), mounted into the guest as `/models/<name>`.
    pub dir: PathBuf,
    /// The source's content version when it was loaded.
    pub version: String,
    /// Size of `model.onnx` times its sessions: the measure of the model cache's budget.
    bytes: u64,
    /// Loaded at start-up (`QA_PRELOAD`): never evicted.
    preloaded: bool,
    /// Logical clock of the last request that used it, for least-recently-used eviction.
    last_used: AtomicU64,
    /// When the source was last asked whether the model changed.
    checked: Mutex<Instant>,
    /// A re-check is running in the background.
    rechecking: std::sync::atomic::AtomicBool,
    /// Re-check on the next use, whatever the TTL says ([`ModelCache::expire`]).
    stale: std::sync::atomic::AtomicBool,
    /// Keeps a downloaded version's files while this model (and so any request on it) lives.
    _files: Option<Arc<VersionLease>>,
}

impl LoadedModel {
    /// Whether the caller should re-check the model's source now: its TTL has passed and no
    /// re-check is running. The caller that gets `true` owns the re-check.
    fn claim_recheck(&self, ttl: Duration) -> bool {
        let Ok(mut checked) = self.checked.lock() else { return false };
        if (checked.elapsed() < ttl && !self.stale.load(Ordering::Acquire)) || self.rechecking.swap(true, Ordering::AcqRel) {
            return false;
        }
        *checked = Instant::now();
        self.stale.store(false, Ordering::Release);
        true
    }

    /// The model as one serving call's guest sees it under `name`.
    pub fn guest_model(&self, name: &str) -> GuestModel {
        self.guest_model_for(name, Call::new(Priority::Serving))
    }

    /// The model as the guest of `call` sees it under `name`: its inference scheduled as that
    /// call's ([`crate::nn::schedule`]).
    pub fn guest_model_for(&self, name: &str, call: Arc<Call>) -> GuestModel {
        let priority = call.priority();
        GuestModel {
            name: name.to_string(),
            dir: self.dir.clone(),
            version: self.version.clone(),
            graph: self.graph.clone().for_call(call),
            priority,
        }
    }
}

/// One model name's place in the cache. The async lock makes loading single-flight:
/// concurrent first requests wait for one fetch and one load.
#[derive(Default)]
struct Slot {
    current: tokio::sync::Mutex<Option<Arc<LoadedModel>>>,
}

pub struct ModelCache {
    catalog: ModelCatalog,
    backend: OnnxBackend,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Budget for models loaded on demand (sum of `model.onnx` sizes, once per session);
    /// `None` is unbounded.
    budget: Option<u64>,
    model_ttl: Duration,
    clock: AtomicU64,
    on_load: Box<dyn OnLoad>,
}

impl ModelCache {
    pub fn new(catalog: ModelCatalog, backend: OnnxBackend, budget: Option<u64>, model_ttl: Duration, on_load: Box<dyn OnLoad>) -> Self {
        ModelCache { catalog, backend, slots: Mutex::new(HashMap::new()), budget, model_ttl, clock: AtomicU64::new(0), on_load }
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    /// Names of the models currently loaded, for tests and health checks.
    pub fn loaded(&self) -> Vec<String> {
        let Ok(slots) = self.slots.lock() else { return Vec::new() };
        let mut names: Vec<String> =
            slots.iter().filter(|(_, slot)| slot.current.try_lock().is_ok_and(|c| c.is_some())).map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// Makes every loaded model whose source can change due for a re-check on its next use,
    /// whatever its TTL says: after a SnapStart restore, the loaded versions are as old as the
    /// snapshot, which may be older than any TTL.
    pub fn expire(&self) {
        let Ok(slots) = self.slots.lock() else { return };
        for (name, slot) in slots.iter() {
            let remote = self.catalog.get(name).is_some_and(|source| source.can_change());
            if let (true, Ok(current)) = (remote, slot.current.try_lock())
                && let Some(model) = current.as_ref()
            {
                model.stale.store(true, Ordering::Release);
            }
        }
    }

    /// The model `name`, fetched and loaded on first use (concurrent first requests wait for
    /// one load). Once `model_ttl` has passed, one request starts a re-check of its source in
    /// the background and every request keeps being served by the loaded version at once
    /// (stale-while-revalidate): a slow or stalled source never holds a request. A new
    /// version found by the re-check serves the requests that start after it is loaded;
    /// requests already running finish on the old one, whose files stay until they do.
    pub async fn get(self: &Arc<Self>, name: &str, preloaded: bool) -> Result<(Arc<LoadedModel>, bool), CacheError> {
        let source = self.catalog.get(name).cloned().ok_or_else(|| CacheError::Unknown {
            name: name.to_string(),
            available: self.catalog.names().collect::<Vec<_>>().join(", "),
        })?;
        let slot = {
            let mut slots = self.slots.lock().map_err(|_| CacheError::Internal("model table poisoned"))?;
            slots.entry(name.to_string()).or_default().clone()
        };
        let mut current = slot.current.lock().await;
        let (model, loaded) = match current.as_ref() {
            Some(model) => {
                if source.can_change() && model.claim_recheck(self.model_ttl) {
                    self.recheck_in_background(name, source, slot.clone(), model.clone());
                }
                (model.clone(), false)
            }
            None => {
                let fresh = self
                    .refresh(name, source.as_ref(), None, preloaded)
                    .await?
                    .ok_or(CacheError::Internal("a first load found nothing to load"))?;
                self.on_load.loaded(name, &fresh).await;
                tracing::info!(model = name, version = %fresh.version, "model serving");
                *current = Some(fresh.clone());
                (fresh, true)
            }
        };
        drop(current);
        model.last_used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        self.evict_over_budget(name);
        Ok((model, loaded))
    }

    /// Asks the source whether `loaded` changed, off the request path; a new version replaces
    /// it in `slot` (unless the slot moved on meanwhile). A failure leaves the loaded version
    /// serving until the next TTL.
    fn recheck_in_background(self: &Arc<Self>, name: &str, source: Arc<dyn ModelSource>, slot: Arc<Slot>, loaded: Arc<LoadedModel>) {
        let (service, name) = (Arc::clone(self), name.to_string());
        tokio::spawn(async move {
            match service.refresh(&name, source.as_ref(), Some(&loaded), loaded.preloaded).await {
                Ok(Some(fresh)) => {
                    service.on_load.loaded(&name, &fresh).await;
                    let mut current = slot.current.lock().await;
                    if current.as_ref().is_some_and(|model| Arc::ptr_eq(model, &loaded)) {
                        // Logged once requests can get it: "model loaded" comes before the
                        // guest is prepared for it, which can take seconds.
                        tracing::info!(model = %name, version = %fresh.version, "model serving");
                        *current = Some(fresh);
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(model = %name, %error, "model re-check failed; serving the loaded version"),
            }
            loaded.rechecking.store(false, Ordering::Release);
        });
    }

    /// Asks the source for the model; loads it when it is new or its version changed.
    async fn refresh(
        &self,
        name: &str,
        source: &dyn ModelSource,
        loaded: Option<&Arc<LoadedModel>>,
        preloaded: bool,
    ) -> Result<Option<Arc<LoadedModel>>, CacheError> {
        let started = Instant::now();
        let local = source.fetch().await.map_err(|source| CacheError::Source { name: name.to_string(), source })?;
        if let Some(model) = loaded.filter(|m| m.version == local.version) {
            if let Ok(mut checked) = model.checked.lock() {
                *checked = Instant::now();
            }
            return Ok(None);
        }
        let dir = std::fs::canonicalize(&local.dir).map_err(|e| {
            tracing::warn!(model = name, dir = %local.dir.display(), error = %e, "model directory unreadable");
            CacheError::Directory { name: name.to_string(), source: e }
        })?;
        // Each session holds its own copy of the weights.
        let sessions = self.backend.settings.sessions.max(1) as u64;
        let bytes = std::fs::metadata(dir.join("model.onnx")).map(|m| m.len()).unwrap_or(0).saturating_mul(sessions);
        let backend = self.backend;
        let load_dir = dir.clone();
        let graph: Arc<dyn Model> =
            tokio::task::spawn_blocking(move || backend.load_model_dir(&load_dir)).await.map_err(CacheError::Loader)?.map_err(|e| {
                tracing::warn!(model = name, error = %e, "model failed to load");
                CacheError::Invalid { name: name.to_string(), source: e }
            })?;
        tracing::info!(model = name, version = %local.version, ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Some(Arc::new(LoadedModel {
            graph,
            dir,
            version: local.version,
            bytes,
            preloaded: preloaded || loaded.is_some_and(|m| m.preloaded),
            last_used: AtomicU64::new(0),
            checked: Mutex::new(Instant::now()),
            rechecking: std::sync::atomic::AtomicBool::new(false),
            stale: std::sync::atomic::AtomicBool::new(false),
            _files: local.lease,
        })))
    }

    /// Drops least recently used on-demand models until the cache fits its budget. Requests
    /// already running keep their model alive until they finish.
    fn evict_over_budget(&self, keep: &str) {
        let Some(budget) = self.budget else { return };
        let Ok(mut slots) = self.slots.lock() else { return };
        loop {
            // Slots busy loading are skipped: they are in use.
            let loaded: Vec<(String, Arc<LoadedModel>)> =
                slots.iter().filter_map(|(n, slot)| slot.current.try_lock().ok().and_then(|c| c.clone()).map(|m| (n.clone(), m))).collect();
            let total: u64 = loaded.iter().filter(|(_, m)| !m.preloaded).map(|(_, m)| m.bytes).sum();
            if total <= budget {
                return;
            }
            let victim = loaded
                .iter()
                .filter(|(n, m)| !m.preloaded && n != keep)
                .min_by_key(|(_, m)| m.last_used.load(Ordering::Relaxed))
                .map(|(n, _)| n.clone());
            match victim {
                Some(name) => {
                    tracing::info!(model = %name, "evicted from the model cache");
                    slots.remove(&name);
                }
                None => return,
            }
        }
    }
}
