//! The one request handler: validate → resolve the model → make its graph ready → run the
//! guest → shape the response. Every edge (CLI, HTTP server, Lambda) calls
//! [`QaService::answer`].

use crate::api::{AnswerSpan, ApiError, PhaseTimings, QaRequest, QaResponse};
use crate::config::HostConfig;
use crate::guest::{GuestError, GuestLimits, GuestQaError, GuestRuntime, Options};
use crate::models::{ModelCatalog, SourceError, is_valid_name};
use crate::nn::onnx::{OnnxBackend, SessionSettings};
use crate::nn::{NnError, init_onnx_runtime};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use wasmtime_wasi_nn::Graph;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    OnnxRuntime(#[from] NnError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Models(#[from] SourceError),
    #[error("no models found in {0} (each model is a directory with model.onnx, tokenizer.json, config.json)")]
    NoModels(String),
}

/// A model ready for inference, shared by all requests.
struct ReadyModel {
    graph: Graph,
    /// Size of `model.onnx`: the measure of the model cache's budget.
    bytes: u64,
    /// Loaded at start-up (`QA_PRELOAD`): never evicted.
    preloaded: bool,
    /// Logical clock of the last request that used it, for least-recently-used eviction.
    last_used: AtomicU64,
}

pub struct QaService {
    catalog: ModelCatalog,
    backend: OnnxBackend,
    /// One cell per model name: concurrent first requests load a model once.
    ready: Mutex<HashMap<String, Arc<OnceCell<Arc<ReadyModel>>>>>,
    /// Budget for models loaded on demand (sum of `model.onnx` sizes); `None` is unbounded.
    cache_budget: Option<u64>,
    clock: AtomicU64,
    guest: GuestRuntime,
    guest_deadline: Duration,
}

impl QaService {
    pub fn start(config: &HostConfig) -> Result<Self, StartError> {
        init_onnx_runtime(config.onnxruntime.as_deref())?;
        let mut catalog = ModelCatalog::discover(&config.models_dir)?;
        catalog.set_default(config.default_model.clone());
        if catalog.names().next().is_none() {
            return Err(StartError::NoModels(config.models_dir.display().to_string()));
        }
        let limits = GuestLimits { deadline: config.guest_deadline, memory_bytes: config.guest_memory_bytes };
        let guest = GuestRuntime::new(&config.guest_wasm, &config.cache_dir, &config.models_dir, limits)?;
        tracing::info!(origin = ?guest.origin, ms = guest.load_time.as_millis() as u64, guest = %config.guest_wasm.display(), "guest ready");
        Ok(Self {
            catalog,
            backend: OnnxBackend { settings: SessionSettings { intra_threads: config.inference_threads } },
            ready: Mutex::new(HashMap::new()),
            cache_budget: config.model_cache_mb.map(|mb| mb << 20),
            clock: AtomicU64::new(0),
            guest,
            guest_deadline: config.guest_deadline,
        })
    }

    /// Loads `names` now, outside any request, and runs one small question through the guest
    /// with each so its tokenizer is parsed too. Preloaded models are never evicted.
    pub async fn preload(self: &Arc<Self>, names: &[String]) -> Result<(), ApiError> {
        for name in names {
            let started = Instant::now();
            self.load(name, true).await?;
            let warm = QaRequest { model_type: Some(name.clone()), ..QaRequest::new("What is warm?", "The guest is warm.") };
            self.answer(warm).await?;
            tracing::info!(model = %name, ms = started.elapsed().as_millis() as u64, "preloaded");
        }
        Ok(())
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    pub fn default_model(&self) -> Option<&str> {
        self.catalog.default_name()
    }

    /// Names of the models currently loaded, for tests and health checks.
    pub fn loaded_models(&self) -> Vec<String> {
        let ready = self.ready.lock().map(|r| r.iter().filter(|(_, c)| c.initialized()).map(|(n, _)| n.clone()).collect());
        let mut names: Vec<String> = ready.unwrap_or_default();
        names.sort();
        names
    }

    /// Makes `name`'s graph ready, fetching and loading it on first use.
    async fn load(&self, name: &str, preloaded: bool) -> Result<Arc<ReadyModel>, ApiError> {
        let source = self.catalog.get(name).cloned().ok_or_else(|| ApiError::UnknownModel {
            name: name.to_string(),
            available: self.catalog.names().collect::<Vec<_>>().join(", "),
        })?;
        let cell = {
            let mut ready = self.ready.lock().map_err(|_| ApiError::Internal("model table poisoned".into()))?;
            ready.entry(name.to_string()).or_default().clone()
        };
        let model = cell
            .get_or_try_init(|| async {
                let dir = source.local_dir().await.map_err(|e| match e {
                    SourceError::NotFound(reason) => ApiError::ModelInvalid { name: name.to_string(), reason },
                    SourceError::Unavailable(reason) => ApiError::ModelUnavailable { name: name.to_string(), reason },
                })?;
                let backend = self.backend;
                let started = Instant::now();
                let bytes = std::fs::metadata(dir.join("model.onnx")).map(|m| m.len()).unwrap_or(0);
                let graph = tokio::task::spawn_blocking(move || backend.load_model_dir(&dir))
                    .await
                    .map_err(|e| ApiError::Internal(format!("model loader: {e}")))?
                    .map_err(|e| ApiError::ModelInvalid { name: name.to_string(), reason: e.to_string() })?;
                tracing::info!(model = name, ms = started.elapsed().as_millis() as u64, "model loaded");
                Ok::<_, ApiError>(Arc::new(ReadyModel { graph, bytes, preloaded, last_used: AtomicU64::new(0) }))
            })
            .await?
            .clone();
        model.last_used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        self.evict_over_budget(name);
        Ok(model)
    }

    /// Drops least recently used on-demand models until the cache fits its budget. Requests
    /// already running keep their model alive until they finish.
    fn evict_over_budget(&self, keep: &str) {
        let Some(budget) = self.cache_budget else { return };
        let Ok(mut ready) = self.ready.lock() else { return };
        loop {
            let loaded: Vec<(&String, &Arc<ReadyModel>)> = ready.iter().filter_map(|(n, c)| c.get().map(|m| (n, m))).collect();
            let total: u64 = loaded.iter().filter(|(_, m)| !m.preloaded).map(|(_, m)| m.bytes).sum();
            if total <= budget {
                return;
            }
            let victim = loaded
                .iter()
                .filter(|(n, m)| !m.preloaded && n.as_str() != keep)
                .min_by_key(|(_, m)| m.last_used.load(Ordering::Relaxed))
                .map(|(n, _)| (*n).clone());
            match victim {
                Some(name) => {
                    tracing::info!(model = %name, "evicted from the model cache");
                    ready.remove(&name);
                }
                None => return,
            }
        }
    }

    /// Answers one request.
    pub async fn answer(self: &Arc<Self>, request: QaRequest) -> Result<QaResponse, ApiError> {
        self.answer_within(request, None).await
    }

    /// Answers one request; the guest's deadline is the configured one or `budget`, if shorter.
    pub async fn answer_within(self: &Arc<Self>, request: QaRequest, budget: Option<Duration>) -> Result<QaResponse, ApiError> {
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
        let model = self.load(&name, false).await?;
        let fetched = started.elapsed();
        let deadline = budget.map_or(self.guest_deadline, |b| b.saturating_sub(fetched).min(self.guest_deadline));

        let options = Options {
            top_k: request.top_k.unwrap_or(1),
            max_answer_len: request.max_answer_len.unwrap_or(15),
            max_seq_len: request.max_seq_len.unwrap_or(384),
            doc_stride: request.doc_stride.unwrap_or(128),
            max_question_len: 64,
            handle_impossible: request.handle_impossible_answer.unwrap_or(false),
        };
        let service = self.clone();
        let graph = model.graph.clone();
        let guest_started = Instant::now();
        let (question, context, guest_name) = (request.question.clone(), request.context.clone(), name.clone());
        let response = tokio::task::spawn_blocking(move || service.guest.ask(&guest_name, graph, &question, &context, options, deadline))
            .await
            .map_err(|e| ApiError::Internal(format!("guest task: {e}")))?
            .map_err(|e| guest_error(&name, e))?;
        let guest_time = guest_started.elapsed();

        let answers: Vec<AnswerSpan> = response
            .answers
            .into_iter()
            .map(|a| AnswerSpan { text: a.text, score: a.score, start: a.start, end: a.end })
            .collect();
        let best = answers.first().cloned().unwrap_or(AnswerSpan { text: String::new(), score: 0.0, start: 0, end: 0 });
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Ok(QaResponse {
            model_type: name,
            question: request.question,
            answer: best.text,
            score: best.score,
            start: best.start,
            end: best.end,
            answers,
            windows: response.timings.windows,
            timings_ms: PhaseTimings {
                fetch: ms(fetched),
                guest: ms(guest_time),
                tokenize: response.timings.tokenize_us as f64 / 1e3,
                inference: response.timings.inference_us as f64 / 1e3,
                total: ms(started.elapsed()),
            },
        })
    }
}

fn guest_error(model: &str, error: GuestError) -> ApiError {
    match error {
        GuestError::Qa(GuestQaError::InvalidInput(m)) => ApiError::GuestRejected(m),
        GuestError::Qa(GuestQaError::ModelNotFound(m) | GuestQaError::ModelInvalid(m)) => {
            ApiError::ModelInvalid { name: model.to_string(), reason: m }
        }
        GuestError::Qa(GuestQaError::Inference(m)) => ApiError::Inference(m),
        GuestError::Timeout(_) => ApiError::GuestTimeout(error.to_string()),
        other => ApiError::GuestFailed(other.to_string()),
    }
}
