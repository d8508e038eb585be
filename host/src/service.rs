//! The one request handler: validate → resolve the model (from the [`ModelCache`]) → run the
//! guest → shape the response. Every edge (CLI, HTTP server, Lambda) calls
//! [`QaService::reply_within`].

use crate::api::{AnswerSpan, ApiError, PhaseTimings, QaBatchResponse, QaReply, QaRequest, QaResponse, QaResult, check_question};
use crate::cache::{LoadedModel, ModelCache, OnLoad};
use crate::config::HostConfig;
use crate::guest::{Artifacts, GuestError, GuestModel, GuestQaError, GuestRuntime, Options, SwappableGuest};
use crate::models::{ModelCatalog, S3Connector, is_valid_name};
use crate::nn::onnx::OnnxBackend;
use crate::nn::{Call, NnError, Priority, init_onnx_runtime};
use crate::rollout::{Answered, Role, Rollout, RolloutStatus, Route, best_answers};
use crate::telemetry::emf::Metrics;
use crate::telemetry::prom::{PromMetrics, Snapshot};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
    #[error("the Prometheus metrics could not be set up: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub struct QaService {
    models: Arc<ModelCache>,
    guest: Arc<SwappableGuest>,
    guest_deadline: Duration,
    compile_snapshots: bool,
    /// Windows one request may run (`QA_MAX_WINDOWS`).
    max_windows: u32,
    /// A candidate guest in shadow or canary mode, if one is configured and loaded.
    rollout: Option<Arc<Rollout>>,
    /// What `GET /metrics` reports (fed by the telemetry layer and the rollout).
    prom: Arc<PromMetrics>,
    /// Every S3 client the service uses: its models', its guest's and its candidate's.
    s3: Vec<Arc<S3Connector>>,
    /// How CloudWatch metric lines are labelled, and whether they are written.
    metrics: Metrics,
}

impl QaService {
    pub async fn start(config: &HostConfig) -> Result<Self, StartError> {
        init_onnx_runtime(config.onnxruntime.as_deref(), &config.session)?;
        log_inference_plan(config);
        let mut catalog = ModelCatalog::build(&config.models_dir, &config.manifest, config.s3.clone());
        catalog.set_default(config.default_model.clone());
        if catalog.names().next().is_none() {
            return Err(StartError::NoModels(config.models_dir.display().to_string()));
        }
        // One set of guest settings, so every guest of this service (serving, swapped in,
        // candidate) takes from one memory budget.
        let settings = config.guest_settings();
        let artifacts = Artifacts::from_env(&config.cache_dir).with_cache_limit(config.cache_bytes);
        let guest = GuestRuntime::load(&config.guest_wasm, artifacts.clone(), settings.clone()).await?;
        tracing::info!(origin = ?guest.origin, ms = guest.load_time.as_millis() as u64, guest = %config.guest_wasm.display(), "guest ready");
        let guest =
            SwappableGuest::new(guest, &config.guest_wasm, config.guest_s3.clone(), artifacts.clone(), settings.clone(), config.guest_ttl);
        let prom = Arc::new(PromMetrics::new()?);
        let rollout = match &config.rollout {
            Some(rollout) => {
                start_rollout(rollout, &guest, artifacts, settings, config.guest_ttl, prom.clone(), Metrics::new(&config.telemetry)).await
            }
            None => None,
        };
        let guests_s3 = [config.guest_s3.as_ref(), config.rollout.as_ref().and_then(|r| r.candidate_s3.as_ref())];
        let s3 = catalog
            .s3_connector()
            .into_iter()
            .chain(guests_s3.into_iter().flatten().map(|(source, _)| source.connector()))
            .cloned()
            .collect();
        let backend = OnnxBackend { settings: config.session };
        let budget = config.model_cache_mb.map(|mb| mb << 20);
        let models = ModelCache::new(catalog, backend, budget, config.model_ttl, Box::new(PrepareGuest(guest.clone())));
        Ok(Self {
            models: Arc::new(models),
            guest,
            guest_deadline: config.guest_deadline,
            compile_snapshots: config.compile_snapshots,
            max_windows: config.max_windows,
            rollout,
            prom,
            s3,
            metrics: Metrics::new(&config.telemetry),
        })
    }

    /// Before a SnapStart snapshot: drops what no restored environment may share with its
    /// siblings (the S3 clients, with the credentials they cached and their open connections).
    pub async fn before_snapshot(&self) {
        for connector in &self.s3 {
            connector.forget().await;
        }
        tracing::info!(s3_clients = self.s3.len(), "dropped before the snapshot: S3 clients (credentials, connections)");
    }

    /// After a SnapStart restore, before the first invocation: new S3 clients (each resolves
    /// its credentials on its first request, in this environment), and the models and guests
    /// that can change are re-checked on their next use, since they are as old as the snapshot.
    pub async fn after_restore(&self) {
        for connector in &self.s3 {
            connector.reconnect().await;
        }
        self.models.expire();
        self.guest.expire();
        if let Some(rollout) = &self.rollout {
            rollout.candidate().expire();
        }
        tracing::info!(s3_clients = self.s3.len(), "restored: S3 clients rebuilt, models and guests due for a re-check");
    }

    /// The models whose content cannot change while the process runs (those in the image):
    /// what a SnapStart snapshot preloads when `QA_PRELOAD` names none.
    pub fn unchanging_models(&self) -> Vec<String> {
        self.catalog().unchanging().map(str::to_string).collect()
    }

    /// Where the candidate guest stands, if one is configured (for `/health`).
    pub fn rollout_status(&self) -> Option<RolloutStatus> {
        self.rollout.as_ref().map(|r| r.status())
    }

    /// The Prometheus metrics the edges feed (through the telemetry layer).
    pub fn prom(&self) -> &Arc<PromMetrics> {
        &self.prom
    }

    /// How CloudWatch metric lines are labelled, and whether they are written.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every metric in the Prometheus text format, with the state they report as it is now.
    pub fn prom_text(&self) -> Result<String, prometheus::Error> {
        self.prom.render(&Snapshot {
            models_available: self.catalog().names().count(),
            models_loaded: self.models.loaded().len(),
            guest_version: self.guest_version(),
            rollout: self.rollout_status(),
        })
    }

    /// Which guest serves (the first 12 hex digits of its SHA-256).
    pub fn guest_version(&self) -> String {
        self.guest.current().id.clone()
    }

    /// Loads `names` now, outside any request, prepares the guest for each (its tokenizer
    /// parsed into the snapshot requests start from) and runs one small question through it.
    /// Preloaded models are never evicted.
    pub async fn preload(self: &Arc<Self>, names: &[String]) -> Result<(), ApiError> {
        for name in names {
            let started = Instant::now();
            let (model, _) = self.models.get(name, true).await?;
            // Loading started the snapshot in the background when none was shipped or cached:
            // the first request waits for it here, not on an unprepared instance.
            let (guest, model) = (self.guest.current(), model.guest_model(name));
            if !guest.prepare(&model, self.compile_snapshots).await {
                guest.wait_prepared(&model).await;
            }
            let warm = QaRequest { model_type: Some(name.clone()), ..QaRequest::new("What is warm?", "The guest is warm.") };
            let warmed = self.answer(warm).await?;
            tracing::info!(
                model = %name,
                ms = started.elapsed().as_millis() as u64,
                warm_up_answer = %warmed.answer,
                warm_up_guest_ms = warmed.timings_ms.guest,
                "preloaded"
            );
        }
        Ok(())
    }

    /// How the serving guest was loaded (compiled, or from a cache) and how long that took.
    pub fn guest_load(&self) -> (crate::guest::Origin, Duration) {
        let guest = self.guest.current();
        (guest.origin, guest.load_time)
    }

    pub fn catalog(&self) -> &ModelCatalog {
        self.models.catalog()
    }

    pub fn default_model(&self) -> Option<&str> {
        self.catalog().default_name()
    }

    /// Names of the models currently loaded, for tests and health checks.
    pub fn loaded_models(&self) -> Vec<String> {
        self.models.loaded()
    }

    /// Answers one request.
    pub async fn answer(self: &Arc<Self>, request: QaRequest) -> Result<QaResponse, ApiError> {
        self.answer_within(request, None, "local").await
    }

    /// Answers a request of one question or many (`questions`), as every edge does; the
    /// guest's deadline is the configured one or `budget`, if shorter. `request_id` picks
    /// the request's guest when a canary or shadow share is configured.
    pub async fn reply_within(
        self: &Arc<Self>,
        request: QaRequest,
        budget: Option<Duration>,
        request_id: &str,
    ) -> Result<QaReply, ApiError> {
        match request.questions {
            Some(_) => self.answer_many_within(request, budget, request_id).await.map(QaReply::Many),
            None => self.answer_within(request, budget, request_id).await.map(QaReply::One),
        }
    }

    /// Answers one question; the guest's deadline is the configured one or `budget`, if
    /// shorter.
    pub async fn answer_within(
        self: &Arc<Self>,
        request: QaRequest,
        budget: Option<Duration>,
        request_id: &str,
    ) -> Result<QaResponse, ApiError> {
        if request.questions.is_some() {
            return Err(ApiError::Internal("a request with `questions` reached the one-question path".into()));
        }
        let ready = self.ready(&request, budget).await?;
        let run = self.run_guest(&ready, Questions::One(request.question.clone()), &request.context, request_id).await;
        let (guest_version, guest_time) = (run.guest_version, run.took);
        let response = run
            .answered
            .and_then(|mut results| results.pop().unwrap_or_else(|| Err(GuestError::BadAnswer("no result".into()))))
            .map_err(|e| ApiError::from_guest(&guest_version, guest_error(&ready.name, e)))?;
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
            guest_version,
            timings_ms: timings.phases(ready.fetched, guest_time, ready.started.elapsed()),
            model_loaded: ready.model_loaded,
            model_type: ready.name,
        })
    }

    /// Runs the request's questions on its guest: the serving one, or the candidate for a
    /// canary share; for a shadow share the candidate then runs them too (under Lambda
    /// within the response's wait bound, elsewhere in the background). Returns the answers
    /// and which guest gave them.
    async fn run_guest(self: &Arc<Self>, ready: &Ready, questions: Questions, context: &str, request_id: &str) -> GuestRun {
        let serving = self.guest.current();
        let model = ready.model.guest_model(&ready.name);
        let started = Instant::now();
        let Some(rollout) = self.rollout.clone() else {
            let answered = questions.ask(&serving, &model, context, ready.options, ready.deadline).await;
            return GuestRun { answered, guest_version: serving.id.clone(), took: started.elapsed() };
        };
        let route = rollout.route(request_id);
        let (guest, role) = match &route {
            Route::Canary(candidate) => (candidate.clone(), Role::Candidate),
            _ => (serving, Role::Serving),
        };
        let answered = questions.ask(&guest, &model, context, ready.options, ready.deadline).await;
        let took = started.elapsed();
        rollout.record(role, &guest, &answered, took);
        if let (Route::Shadow(candidate), Some(served)) = (route, best_answers(&answered))
            && let Some(slot) = rollout.shadow_slot()
        {
            // Its own call: a shadow's inference runs on the model's shadow lane, and is shed
            // while serving calls wait ([`crate::nn::schedule`]).
            let call = Call::new(Priority::Shadow);
            let shadow = Shadow {
                rollout,
                candidate,
                model: ready.model.guest_model_for(&ready.name, call.clone()),
                call,
                questions,
                context: context.to_string(),
                options: ready.options,
                request_id: request_id.to_string(),
                served,
                _slot: slot,
            };
            // Well below the serving deadline, whatever the settings: at most half of it.
            let cap = shadow.rollout.policy().shadow_deadline.min(self.guest_deadline / 2);
            match ready.budget {
                // Under Lambda nothing runs between invocations: the shadow call runs now,
                // within the wait bound and what is left of the invocation.
                Some(budget) => {
                    let left = budget.saturating_sub(ready.started.elapsed());
                    let bound = shadow.rollout.policy().shadow_max_delay.min(left).min(cap);
                    shadow.run(bound, true).await;
                }
                None => {
                    tokio::spawn(shadow.run(cap, false));
                }
            }
        }
        GuestRun { answered, guest_version: guest.id.clone(), took }
    }

    /// Answers several questions over one context in one guest call (a 0.1 guest is asked
    /// question by question in the same instance). A question that fails its own checks, or
    /// that the guest refuses, fails only its entry.
    async fn answer_many_within(
        self: &Arc<Self>,
        request: QaRequest,
        budget: Option<Duration>,
        request_id: &str,
    ) -> Result<QaBatchResponse, ApiError> {
        let ready = self.ready(&request, budget).await?;
        let questions = request.questions.unwrap_or_default();
        let checked: Vec<Result<(), ApiError>> = questions.iter().map(|q| check_question(q)).collect();
        let asked: Vec<String> = questions.iter().zip(&checked).filter(|(_, check)| check.is_ok()).map(|(q, _)| q.clone()).collect();
        let (answered, guest_version, guest_time) = match asked.is_empty() {
            true => (Vec::new(), self.guest_version(), Duration::ZERO),
            false => {
                let run = self.run_guest(&ready, Questions::Many(asked), &request.context, request_id).await;
                let answered = run.answered.map_err(|e| ApiError::from_guest(&run.guest_version, guest_error(&ready.name, e)))?;
                (answered, run.guest_version, run.took)
            }
        };
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
            guest_version,
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
                    available: self.catalog().names().collect::<Vec<_>>().join(", "),
                });
            }
            Some(name) => name.to_string(),
            None => self.default_model().ok_or_else(|| ApiError::Internal("no default model".into()))?.to_string(),
        };
        // Under Lambda the whole request has a budget: a model that cannot be made available
        // within it is a clean 503, not a timed-out invocation. (A download cut short here is
        // never used: it is only published once complete.)
        let (model, model_loaded) = match budget {
            Some(budget) => {
                tokio::time::timeout(budget, self.models.get(&name, false)).await.map_err(|_| ApiError::ModelUnavailable {
                    name: name.clone(),
                    reason: format!("not available within the request's remaining time ({} ms)", budget.as_millis()),
                })??
            }
            None => self.models.get(&name, false).await?,
        };
        let fetched = started.elapsed();
        let deadline = budget.map_or(self.guest_deadline, |b| b.saturating_sub(fetched).min(self.guest_deadline));
        let options = request.options(self.max_windows);
        Ok(Ready { name, model, model_loaded, options, deadline, budget, started, fetched })
    }
}

/// Says once, at start, how inference was sized: the CPU share found and where from, and the
/// threads, sessions and spinning chosen (from the share unless a setting overrode them).
fn log_inference_plan(config: &HostConfig) {
    let session = &config.session;
    tracing::info!(
        cpu_share = (config.cpu.cpus * 1000.0).round() / 1000.0,
        share_from = %config.cpu.describe(),
        visible_cpus = config.cpu.visible,
        threads = session.intra_threads,
        sessions_per_model = session.sessions,
        spinning = session.spinning,
        "inference sized to the CPU share"
    );
}

/// The guest prepared for each model version the cache loads: a snapshot shipped or cached
/// for it is picked up now (a deserialization); one to compile is made in the background.
struct PrepareGuest(Arc<SwappableGuest>);

impl OnLoad for PrepareGuest {
    fn loaded<'a>(&'a self, name: &'a str, model: &'a LoadedModel) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let guest = self.0.current();
            let model = model.guest_model(name);
            if !guest.prepare(&model, false).await {
                guest.prepare_in_background(&model);
            }
        })
    }
}

/// A request made ready for the guest by [`QaService::ready`].
struct Ready {
    name: String,
    model: Arc<LoadedModel>,
    model_loaded: bool,
    options: Options,
    deadline: Duration,
    /// What the edge allowed the whole request (under Lambda).
    budget: Option<Duration>,
    started: Instant,
    fetched: Duration,
}

/// What [`QaService::run_guest`] did: the answers, which guest gave them and how long its
/// call took (a shadow call after it not included).
struct GuestRun {
    answered: Answered,
    guest_version: String,
    took: Duration,
}

/// The question or questions a guest is asked.
#[derive(Clone)]
enum Questions {
    One(String),
    Many(Vec<String>),
}

impl Questions {
    /// Asks `guest`; one entry per question.
    async fn ask(&self, guest: &Arc<GuestRuntime>, model: &GuestModel, context: &str, options: Options, deadline: Duration) -> Answered {
        match self {
            Questions::One(question) => guest.ask(model, question, context, options, deadline).await.map(|r| vec![Ok(r)]),
            Questions::Many(questions) => guest.ask_many(model, questions, context, options, deadline).await,
        }
    }
}

/// A request run again on the candidate, after the serving guest answered it.
struct Shadow {
    rollout: Arc<Rollout>,
    candidate: Arc<GuestRuntime>,
    model: GuestModel,
    questions: Questions,
    context: String,
    options: Options,
    request_id: String,
    /// The best answer the serving guest gave each question.
    served: Vec<Option<crate::guest::Answer>>,
    /// The shadow call's standing in inference scheduling: whether its runs were shed.
    call: Arc<Call>,
    /// Held while the shadow call runs (see [`crate::rollout::MAX_SHADOW_CALLS`]).
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Shadow {
    /// Runs the candidate within `bound` and records how it compares with what was served. When
    /// `cut_is_not_its_fault` (a bound shorter than the guest's deadline, under Lambda), a
    /// call stopped by the bound is not counted; nor is one whose inference was shed to make
    /// room for serving calls, or one whose deadline passed while its inference waited for the
    /// shadow lane.
    async fn run(self, bound: Duration, cut_is_not_its_fault: bool) {
        let started = Instant::now();
        let shadow = self.questions.ask(&self.candidate, &self.model, &self.context, self.options, bound).await;
        // A deadline that passed while the candidate's inference still waited for the shadow
        // lane (which yields to every other thread: a host busy compiling or serving starves
        // it) measured the host, not the candidate.
        let timed_out = matches!(shadow, Err(GuestError::Timeout(_)));
        let cut = (timed_out && (cut_is_not_its_fault || self.call.waits_for_lane())) || self.call.was_shed();
        self.rollout.record_shadow(&self.request_id, &self.candidate, &self.served, (!cut).then_some(&shadow), started.elapsed());
    }
}

/// The candidate guest loaded beside the serving one; a candidate that does not load is
/// logged and left out (the serving guest serves everything) until the host restarts.
async fn start_rollout(
    settings: &crate::rollout::RolloutSettings,
    serving: &Arc<SwappableGuest>,
    artifacts: Artifacts,
    guest: crate::guest::GuestSettings,
    ttl: Duration,
    prom: Arc<PromMetrics>,
    metrics: Metrics,
) -> Option<Arc<Rollout>> {
    match GuestRuntime::load(&settings.candidate, artifacts.clone(), guest.clone()).await {
        Ok(runtime) => {
            tracing::info!(candidate = %runtime.id, serving = %serving.current().id, percent = settings.percent, setting = settings.setting(), "candidate guest ready");
            let candidate = SwappableGuest::new(runtime, &settings.candidate, settings.candidate_s3.clone(), artifacts, guest, ttl);
            Some(Arc::new(Rollout::new(serving.clone(), candidate, settings, metrics, prom)))
        }
        Err(error) => {
            tracing::error!(setting = settings.setting(), guest = %settings.candidate.display(), %error, "candidate guest rejected; the serving guest takes every request");
            None
        }
    }
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
        // Retryable: an instance, or its memory, comes free as soon as a request in flight ends.
        GuestError::Busy(_) | GuestError::Crowded { .. } => ApiError::Overloaded,
        other => ApiError::GuestFailed(other.to_string()),
    }
}
