//! The one request handler: validate → resolve the model (from the [`ModelCache`]) → run the
//! guest → shape the response. Every edge (CLI, HTTP server, Lambda) calls
//! [`QaService::reply_within`].

use crate::api::{
    ApiError, ManyAnswers, OneAnswer, PhaseTimings, QaBatchResponse, QaReply, QaRequest, QaResponse, QaResult, Questions, RolloutStatus,
    check_question,
};
use crate::guest::{AnswerError, Options, SwappableGuest};
use crate::model_cache::{LoadedModel, ModelCache};
use crate::models::{ModelCatalog, S3Connector, is_valid_name};
use crate::rollout::{GuestCall, GuestRun, Rollout, ShadowBound};
use crate::telemetry::emf::Metrics;
use crate::telemetry::layer::{Answering, Call, Outcome, TelemetryLayer};
use crate::telemetry::prom::{PromMetrics, Snapshot};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub struct QaService {
    pub(crate) models: Arc<ModelCache>,
    pub(crate) guest: Arc<SwappableGuest>,
    pub(crate) guest_deadline: Duration,
    pub(crate) compile_snapshots: bool,
    /// Windows one request may run (`QA_MAX_WINDOWS`).
    pub(crate) max_windows: u32,
    /// A candidate guest in shadow or canary mode, if one is configured and loaded.
    pub(crate) rollout: Option<Arc<Rollout>>,
    /// What `GET /metrics` reports (fed by the telemetry layer and the rollout).
    pub(crate) prom: Arc<PromMetrics>,
    /// Every S3 client the service uses: its models', its guest's and its candidate's.
    pub(crate) s3: Vec<Arc<S3Connector>>,
    /// How CloudWatch metric lines are labelled, and whether they are written.
    pub(crate) metrics: Metrics,
}

impl QaService {
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
            Questions::Many(_) => self.answer_many_within(request, budget, request_id).await.map(QaReply::from),
            Questions::One(_) => self.answer_within(request, budget, request_id).await.map(QaReply::from),
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
        let Questions::One(question) = &request.questions else {
            return Err(ApiError::Internal("a request with `questions` reached the one-question path".into()));
        };
        let question = question.clone();
        let ready = self.ready(&request, budget).await?;
        let run = self.run_guest(&ready, Questions::One(question.clone()), &request.context, request_id).await;
        let (guest_version, guest_time) = (run.guest_version, run.took);
        let response = run
            .answered
            .and_then(|mut results| results.pop().unwrap_or_else(|| Err(AnswerError::ResultCount { results: 0, questions: 1 }.into())))
            .map_err(|e| ApiError::from_guest(&guest_version, ApiError::from_guest_error(&ready.name, e)))?;
        Ok(QaResponse {
            body: OneAnswer::new(question, response.answers),
            windows: response.windows,
            model_version: ready.model.version.clone(),
            guest_version,
            timings_ms: response.timings.with_host(ready.fetched, guest_time, ready.started.elapsed()),
            model_loaded: ready.model_loaded,
            model_type: ready.name,
        })
    }

    /// Runs the request's questions on its guest: the serving one, or the rollout's choice
    /// when a candidate is configured ([`Rollout::ask`]).
    async fn run_guest(self: &Arc<Self>, ready: &Ready, questions: Questions, context: &str, request_id: &str) -> GuestRun {
        let call =
            GuestCall { model: &ready.model, name: &ready.name, questions, context, options: ready.options, deadline: ready.deadline };
        let serving = self.guest.current();
        match &self.rollout {
            Some(rollout) => {
                let bound = ShadowBound { invocation: ready.budget.map(|b| (ready.started, b)), serving_deadline: self.guest_deadline };
                rollout.ask(serving, call, request_id, bound).await
            }
            None => {
                let started = Instant::now();
                let answered = call.ask(&serving).await;
                GuestRun { answered, guest_version: serving.id.clone(), took: started.elapsed() }
            }
        }
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
        let Questions::Many(questions) = request.questions else {
            return Err(ApiError::Internal("a request of one question reached the many-question path".into()));
        };
        let checked: Vec<Result<(), ApiError>> = questions.iter().map(|q| check_question(q)).collect();
        let asked: Vec<String> = questions.iter().zip(&checked).filter(|(_, check)| check.is_ok()).map(|(q, _)| q.clone()).collect();
        let (answered, guest_version, guest_time) = match asked.is_empty() {
            true => (Vec::new(), self.guest_version(), Duration::ZERO),
            false => {
                let run = self.run_guest(&ready, Questions::Many(asked), &request.context, request_id).await;
                let answered =
                    run.answered.map_err(|e| ApiError::from_guest(&run.guest_version, ApiError::from_guest_error(&ready.name, e)))?;
                (answered, run.guest_version, run.took)
            }
        };
        let (mut timings, mut windows) = (PhaseTimings::default(), 0);
        let mut answered = answered.into_iter();
        let results = questions
            .into_iter()
            .zip(checked)
            .map(|(question, check)| match check.map(|()| answered.next()) {
                Err(error) => QaResult::failed(question, &error),
                Ok(Some(Ok(response))) => {
                    timings += &response.timings;
                    windows += response.windows;
                    QaResult::answered(question, response.answers)
                }
                Ok(Some(Err(error))) => QaResult::failed(question, &ApiError::from_guest_error(&ready.name, error)),
                Ok(None) => QaResult::failed(question, &ApiError::Internal("the guest gave fewer results than questions".into())),
            })
            .collect();
        Ok(QaBatchResponse {
            body: ManyAnswers { results },
            windows,
            model_version: ready.model.version.clone(),
            guest_version,
            timings_ms: timings.with_host(ready.fetched, guest_time, ready.started.elapsed()),
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

/// `service`'s answers, each reported by `telemetry`; a call that did not parse is reported
/// and handed back.
pub fn answering(service: Arc<QaService>, telemetry: TelemetryLayer) -> Answering {
    BoxCloneSyncService::new(ServiceBuilder::new().layer(telemetry).service_fn(move |call: Call| {
        let service = service.clone();
        async move {
            Ok::<Outcome, Infallible>(match call.request {
                Ok(request) => service.reply_within(request, call.budget, &call.request_id).await,
                Err(error) => Err(error),
            })
        }
    }))
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
