//! The one request handler: validate → resolve the model → make its graph ready → run the
//! guest → shape the response. Every edge (CLI, HTTP server, Lambda) calls
//! [`QaService::answer`].

use crate::api::{AnswerSpan, ApiError, PhaseTimings, QaBatchResponse, QaReply, QaRequest, QaResponse, QaResult, check_question};
use crate::config::HostConfig;
use crate::guest::{Artifacts, GuestError, GuestModel, GuestQaError, GuestRuntime, Options, SwappableGuest};
use crate::models::{ModelCatalog, ModelSource, SourceError, VersionLease, is_valid_name};
use crate::nn::onnx::OnnxBackend;
use crate::nn::{Model, NnError, init_onnx_runtime};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    OnnxRuntime(#[from] NnError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("no models found in {0} (each model is a directory with model.onnx, tokenizer.json, config.json)")]
    NoModels(String),
}

/// A model ready for inference, shared by all requests.
struct ReadyModel {
    graph: Arc<dyn Model>,
    /// Where its files are (canonical), mounted into the guest as `/models/<name>`.
    dir: PathBuf,
    /// The source's content version when it was loaded.
    version: String,
    /// Size of `model.onnx`: the measure of the model cache's budget.
    bytes: u64,
    /// Loaded at start-up (`QA_PRELOAD`): never evicted.
    preloaded: bool,
    /// Logical clock of the last request that used it, for least-recently-used eviction.
    last_used: AtomicU64,
    /// When the source was last asked whether the model changed.
    checked: Mutex<Instant>,
    /// A re-check is running in the background.
    rechecking: std::sync::atomic::AtomicBool,
    /// Keeps a downloaded version's files while this model (and so any request on it) lives.
    _files: Option<Arc<VersionLease>>,
}

impl ReadyModel {
    /// Whether the caller should re-check the model's source now: its TTL has passed and no
    /// re-check is running. The caller that gets `true` owns the re-check.
    fn claim_recheck(&self, ttl: Duration) -> bool {
        let Ok(mut checked) = self.checked.lock() else { return false };
        if checked.elapsed() < ttl || self.rechecking.swap(true, Ordering::AcqRel) {
            return false;
        }
        *checked = Instant::now();
        true
    }

    /// The model as the guest sees it under `name`.
    fn guest_model(&self, name: &str) -> GuestModel {
        GuestModel { name: name.to_string(), dir: self.dir.clone(), version: self.version.clone(), graph: self.graph.clone() }
    }
}

/// One model name's place in the cache. The async lock makes loading single-flight:
/// concurrent first requests wait for one fetch and one load.
#[derive(Default)]
struct Slot {
    current: tokio::sync::Mutex<Option<Arc<ReadyModel>>>,
}

pub struct QaService {
    catalog: ModelCatalog,
    backend: OnnxBackend,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Budget for models loaded on demand (sum of `model.onnx` sizes); `None` is unbounded.
    cache_budget: Option<u64>,
    model_ttl: Duration,
    clock: AtomicU64,
    guest: Arc<SwappableGuest>,
    guest_deadline: Duration,
    compile_snapshots: bool,
    /// Windows one request may run (`QA_MAX_WINDOWS`).
    max_windows: u32,
}

impl QaService {
    pub async fn start(config: &HostConfig) -> Result<Self, StartError> {
        init_onnx_runtime(config.onnxruntime.as_deref())?;
        let mut catalog = ModelCatalog::build(&config.models_dir, &config.manifest, config.s3.clone());
        catalog.set_default(config.default_model.clone());
        if catalog.names().next().is_none() {
            return Err(StartError::NoModels(config.models_dir.display().to_string()));
        }
        let settings = config.guest_settings();
        let artifacts = Artifacts::from_env(&config.cache_dir);
        let guest = GuestRuntime::load(&config.guest_wasm, artifacts.clone(), settings).await?;
        tracing::info!(origin = ?guest.origin, ms = guest.load_time.as_millis() as u64, guest = %config.guest_wasm.display(), "guest ready");
        Ok(Self {
            catalog,
            backend: OnnxBackend { settings: config.session },
            slots: Mutex::new(HashMap::new()),
            cache_budget: config.model_cache_mb.map(|mb| mb << 20),
            model_ttl: config.model_ttl,
            clock: AtomicU64::new(0),
            guest: SwappableGuest::new(guest, &config.guest_wasm, config.guest_s3.clone(), artifacts, settings, config.guest_ttl),
            guest_deadline: config.guest_deadline,
            compile_snapshots: config.compile_snapshots,
            max_windows: config.max_windows,
        })
    }

    /// Loads `names` now, outside any request, prepares the guest for each (its tokenizer
    /// parsed into the snapshot requests start from) and runs one small question through it.
    /// Preloaded models are never evicted.
    pub async fn preload(self: &Arc<Self>, names: &[String]) -> Result<(), ApiError> {
        for name in names {
            let started = Instant::now();
            let (model, _) = self.load(name, true).await?;
            self.guest.current().prepare(&model.guest_model(name), self.compile_snapshots).await;
            let warm = QaRequest { model_type: Some(name.clone()), ..QaRequest::new("What is warm?", "The guest is warm.") };
            self.answer(warm).await?;
            tracing::info!(model = %name, ms = started.elapsed().as_millis() as u64, "preloaded");
        }
        Ok(())
    }

    /// How the serving guest was loaded (compiled, or from a cache) and how long that took.
    pub fn guest_load(&self) -> (crate::guest::Origin, Duration) {
        let guest = self.guest.current();
        (guest.origin, guest.load_time)
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    pub fn default_model(&self) -> Option<&str> {
        self.catalog.default_name()
    }

    /// Names of the models currently loaded, for tests and health checks.
    pub fn loaded_models(&self) -> Vec<String> {
        let Ok(slots) = self.slots.lock() else { return Vec::new() };
        let mut names: Vec<String> =
            slots.iter().filter(|(_, slot)| slot.current.try_lock().is_ok_and(|c| c.is_some())).map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// The model `name`, fetched and loaded on first use (concurrent first requests wait for
    /// one load). Once `model_ttl` has passed, one request starts a re-check of its source in
    /// the background and every request keeps being served by the loaded version at once
    /// (stale-while-revalidate): a slow or stalled source never holds a request. A new
    /// version found by the re-check serves the requests that start after it is loaded;
    /// requests already running finish on the old one, whose files stay until they do.
    async fn load(self: &Arc<Self>, name: &str, preloaded: bool) -> Result<(Arc<ReadyModel>, bool), ApiError> {
        let source = self.catalog.get(name).cloned().ok_or_else(|| ApiError::UnknownModel {
            name: name.to_string(),
            available: self.catalog.names().collect::<Vec<_>>().join(", "),
        })?;
        let slot = {
            let mut slots = self.slots.lock().map_err(|_| ApiError::Internal("model table poisoned".into()))?;
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
                    .ok_or_else(|| ApiError::Internal("a first load found nothing to load".into()))?;
                self.prepare_guest(name, &fresh).await;
                *current = Some(fresh.clone());
                (fresh, true)
            }
        };
        drop(current);
        model.last_used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        self.evict_over_budget(name);
        Ok((model, loaded))
    }

    /// A snapshot shipped or cached for this model is picked up now (a deserialization); one
    /// to compile is made in the background.
    async fn prepare_guest(&self, name: &str, model: &ReadyModel) {
        let guest = self.guest.current();
        let model = model.guest_model(name);
        if !guest.prepare(&model, false).await {
            guest.prepare_in_background(&model);
        }
    }

    /// Asks the source whether `loaded` changed, off the request path; a new version replaces
    /// it in `slot` (unless the slot moved on meanwhile). A failure leaves the loaded version
    /// serving until the next TTL.
    fn recheck_in_background(self: &Arc<Self>, name: &str, source: Arc<dyn ModelSource>, slot: Arc<Slot>, loaded: Arc<ReadyModel>) {
        let (service, name) = (Arc::clone(self), name.to_string());
        tokio::spawn(async move {
            match service.refresh(&name, source.as_ref(), Some(&loaded), loaded.preloaded).await {
                Ok(Some(fresh)) => {
                    service.prepare_guest(&name, &fresh).await;
                    let mut current = slot.current.lock().await;
                    if current.as_ref().is_some_and(|model| Arc::ptr_eq(model, &loaded)) {
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
        loaded: Option<&Arc<ReadyModel>>,
        preloaded: bool,
    ) -> Result<Option<Arc<ReadyModel>>, ApiError> {
        let started = Instant::now();
        let local = source.fetch().await.map_err(|e| source_error(name, e))?;
        if let Some(model) = loaded.filter(|m| m.version == local.version) {
            if let Ok(mut checked) = model.checked.lock() {
                *checked = Instant::now();
            }
            return Ok(None);
        }
        let dir = std::fs::canonicalize(&local.dir).map_err(|e| {
            tracing::warn!(model = name, dir = %local.dir.display(), error = %e, "model directory unreadable");
            ApiError::ModelUnavailable { name: name.to_string(), reason: format!("the model's directory: {e}") }
        })?;
        let bytes = std::fs::metadata(dir.join("model.onnx")).map(|m| m.len()).unwrap_or(0);
        let backend = self.backend;
        let load_dir = dir.clone();
        let graph: Arc<dyn Model> = tokio::task::spawn_blocking(move || backend.load_model_dir(&load_dir))
            .await
            .map_err(|e| ApiError::Internal(format!("model loader: {e}")))?
            .map_err(|e| {
                tracing::warn!(model = name, error = %e, "model failed to load");
                ApiError::ModelInvalid { name: name.to_string(), reason: e.client_reason() }
            })?;
        tracing::info!(model = name, version = %local.version, ms = started.elapsed().as_millis() as u64, "model loaded");
        Ok(Some(Arc::new(ReadyModel {
            graph,
            dir,
            version: local.version,
            bytes,
            preloaded: preloaded || loaded.is_some_and(|m| m.preloaded),
            last_used: AtomicU64::new(0),
            checked: Mutex::new(Instant::now()),
            rechecking: std::sync::atomic::AtomicBool::new(false),
            _files: local.lease,
        })))
    }

    /// Drops least recently used on-demand models until the cache fits its budget. Requests
    /// already running keep their model alive until they finish.
    fn evict_over_budget(&self, keep: &str) {
        let Some(budget) = self.cache_budget else { return };
        let Ok(mut slots) = self.slots.lock() else { return };
        loop {
            // Slots busy loading are skipped: they are in use.
            let loaded: Vec<(String, Arc<ReadyModel>)> =
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

    /// Answers one request.
    pub async fn answer(self: &Arc<Self>, request: QaRequest) -> Result<QaResponse, ApiError> {
        self.answer_within(request, None).await
    }

    /// Answers a request of one question or many (`questions`), as every edge does; the
    /// guest's deadline is the configured one or `budget`, if shorter.
    pub async fn reply_within(self: &Arc<Self>, request: QaRequest, budget: Option<Duration>) -> Result<QaReply, ApiError> {
        match request.questions {
            Some(_) => self.answer_many_within(request, budget).await.map(QaReply::Many),
            None => self.answer_within(request, budget).await.map(QaReply::One),
        }
    }

    /// Answers one question; the guest's deadline is the configured one or `budget`, if
    /// shorter.
    pub async fn answer_within(self: &Arc<Self>, request: QaRequest, budget: Option<Duration>) -> Result<QaResponse, ApiError> {
        if request.questions.is_some() {
            return Err(ApiError::Internal("a request with `questions` reached the one-question path".into()));
        }
        let ready = self.ready(&request, budget).await?;
        let guest_started = Instant::now();
        let response = self
            .guest
            .current()
            .ask(&ready.model.guest_model(&ready.name), &request.question, &request.context, ready.options, ready.deadline)
            .await
            .map_err(|e| guest_error(&ready.name, e))?;
        let guest_time = guest_started.elapsed();
        let mut timings = GuestTimings::default();
        timings.add(&response.timings);
        let answers = spans(response.answers);
        let best = AnswerSpan::best(&answers);
        Ok(QaResponse {
            question: request.question,
            answer: best.text,
            score: best.score,
            start: best.start,
            end: best.end,
            answers,
            windows: timings.windows,
            model_version: ready.model.version.clone(),
            timings_ms: timings.phases(ready.fetched, guest_time, ready.started.elapsed()),
            model_loaded: ready.model_loaded,
            model_type: ready.name,
        })
    }

    /// Answers several questions over one context in one guest call (a 0.1 guest is asked
    /// question by question in the same instance). A question that fails its own checks, or
    /// that the guest refuses, fails only its entry.
    async fn answer_many_within(self: &Arc<Self>, request: QaRequest, budget: Option<Duration>) -> Result<QaBatchResponse, ApiError> {
        let ready = self.ready(&request, budget).await?;
        let questions = request.questions.unwrap_or_default();
        let checked: Vec<Result<(), ApiError>> = questions.iter().map(|q| check_question(q)).collect();
        let asked: Vec<String> = questions.iter().zip(&checked).filter(|(_, check)| check.is_ok()).map(|(q, _)| q.clone()).collect();
        let guest_started = Instant::now();
        let answered = match asked.is_empty() {
            true => Vec::new(),
            false => self
                .guest
                .current()
                .ask_many(&ready.model.guest_model(&ready.name), &asked, &request.context, ready.options, ready.deadline)
                .await
                .map_err(|e| guest_error(&ready.name, e))?,
        };
        let guest_time = guest_started.elapsed();
        let mut timings = GuestTimings::default();
        let mut answered = answered.into_iter();
        let results = questions
            .into_iter()
            .zip(checked)
            .map(|(question, check)| match check.map(|()| answered.next()) {
                Err(error) => QaResult::failed(question, &error),
                Ok(Some(Ok(response))) => {
                    timings.add(&response.timings);
                    QaResult::answered(question, spans(response.answers))
                }
                Ok(Some(Err(error))) => QaResult::failed(question, &guest_error(&ready.name, error)),
                Ok(None) => QaResult::failed(question, &ApiError::Internal("the guest gave fewer results than questions".into())),
            })
            .collect();
        Ok(QaBatchResponse {
            results,
            windows: timings.windows,
            model_version: ready.model.version.clone(),
            timings_ms: timings.phases(ready.fetched, guest_time, ready.started.elapsed()),
            model_loaded: ready.model_loaded,
            model_type: ready.name,
        })
    }

    /// What answering needs before the guest runs: the request checked, its model loaded
    /// (within `budget` under Lambda), the guest's options and deadline.
    async fn ready(self: &Arc<Self>, request: &QaRequest, budget: Option<Duration>) -> Result<Ready, ApiError> {
        let started = Instant::now();
        request.validate()?;
        let name = match request.model_type.as_deref() {
            Some(name) if !is_valid_name(name) => {
                return Err(ApiError::UnknownModel {
                    name: name.to_string(),
                    available: self.catalog.names().collect::<Vec<_>>().join(", "),
                });
            }
            Some(name) => name.to_string(),
            None => self.default_model().ok_or_else(|| ApiError::Internal("no default model".into()))?.to_string(),
        };
        // Under Lambda the whole request has a budget: a model that cannot be made available
        // within it is a clean 503, not a timed-out invocation. (A download cut short here is
        // never used: it is only published once complete.)
        let (model, model_loaded) = match budget {
            Some(budget) => tokio::time::timeout(budget, self.load(&name, false)).await.map_err(|_| ApiError::ModelUnavailable {
                name: name.clone(),
                reason: format!("not available within the request's remaining time ({} ms)", budget.as_millis()),
            })??,
            None => self.load(&name, false).await?,
        };
        let fetched = started.elapsed();
        let deadline = budget.map_or(self.guest_deadline, |b| b.saturating_sub(fetched).min(self.guest_deadline));
        let max_seq_len = request.max_seq_len.unwrap_or(384);
        let options = Options {
            top_k: request.top_k.unwrap_or(1),
            max_answer_len: request.max_answer_len.unwrap_or(15),
            max_seq_len,
            // The reference pipeline's default: half the window, at most 128 tokens.
            doc_stride: request.doc_stride.unwrap_or((max_seq_len / 2).min(128)),
            max_question_len: 64,
            handle_impossible: request.handle_impossible_answer.unwrap_or(false),
            max_windows: self.max_windows,
        };
        Ok(Ready { name, model, model_loaded, options, deadline, started, fetched })
    }
}

/// A request made ready for the guest by [`QaService::ready`].
struct Ready {
    name: String,
    model: Arc<ReadyModel>,
    model_loaded: bool,
    options: Options,
    deadline: Duration,
    started: Instant,
    fetched: Duration,
}

/// The guest's timings, summed over the questions of a call.
#[derive(Default)]
struct GuestTimings {
    tokenize_us: u64,
    inference_us: u64,
    decode_us: u64,
    windows: u32,
}

impl GuestTimings {
    fn add(&mut self, timings: &crate::guest::Timings) {
        self.tokenize_us += timings.tokenize_us;
        self.inference_us += timings.inference_us;
        self.decode_us += timings.decode_us;
        self.windows += timings.windows;
    }

    fn phases(&self, fetch: Duration, guest: Duration, total: Duration) -> PhaseTimings {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        PhaseTimings {
            fetch: ms(fetch),
            guest: ms(guest),
            tokenize: self.tokenize_us as f64 / 1e3,
            inference: self.inference_us as f64 / 1e3,
            decode: self.decode_us as f64 / 1e3,
            total: ms(total),
        }
    }
}

fn spans(answers: Vec<crate::guest::Answer>) -> Vec<AnswerSpan> {
    answers.into_iter().map(|a| AnswerSpan { text: a.text, score: a.score, start: a.start, end: a.end }).collect()
}

/// When `config.guest_wasm` is an `s3://bucket/key` URI, downloads the guest into the S3
/// cache (verified, atomically, as models are) and points `guest_wasm` at the local copy.
pub async fn resolve_guest(config: &mut HostConfig) -> Result<(), String> {
    let Some(uri) = config.guest_wasm.to_str().and_then(|s| s.strip_prefix("s3://")).map(str::to_string) else {
        return Ok(());
    };
    let (bucket, key) = uri
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty() && !k.ends_with('/'))
        .ok_or_else(|| format!("QA_GUEST s3://{uri} is not s3://bucket/key"))?;
    let source =
        Arc::new(crate::models::S3Source::single_object(crate::models::S3Connector::new(config.s3.clone()), "_guest", bucket, key));
    let local = source.fetch().await.map_err(|e| format!("guest {}: {e}", config.guest_wasm.display()))?;
    let file = key.rsplit('/').next().unwrap_or(key);
    config.guest_wasm = local.dir.join(file);
    config.guest_s3 = Some((source, local.version));
    Ok(())
}

fn source_error(model: &str, error: SourceError) -> ApiError {
    let name = model.to_string();
    match error {
        SourceError::NotFound(reason) => ApiError::ModelNotFound { name, reason },
        SourceError::Unavailable(reason) => ApiError::ModelUnavailable { name, reason },
        SourceError::Corrupt(reason) => ApiError::ModelCorrupt { name, reason },
    }
}

fn guest_error(model: &str, error: GuestError) -> ApiError {
    match error {
        GuestError::Qa(GuestQaError::InvalidInput(m)) => ApiError::GuestRejected(m),
        GuestError::Qa(GuestQaError::InvalidOption(m)) => ApiError::InvalidField(m),
        GuestError::Qa(GuestQaError::TooManyWindows(m)) => ApiError::TooManyWindows(m),
        GuestError::Qa(GuestQaError::ModelNotFound(m) | GuestQaError::ModelInvalid(m)) => {
            ApiError::ModelInvalid { name: model.to_string(), reason: m }
        }
        GuestError::Qa(GuestQaError::Inference(m)) => ApiError::Inference(m),
        GuestError::Prepare { model, reason } => ApiError::ModelInvalid { name: model, reason },
        GuestError::Timeout(_) => ApiError::GuestTimeout(error.to_string()),
        other => ApiError::GuestFailed(other.to_string()),
    }
}
