//! What every answered request reports, as one tower layer around the service that answers it:
//! a log line (answered, or failed with its code), its Prometheus series ([`super::prom`]) and,
//! under Lambda, an EMF metric line ([`super::emf`]), the process's cold start on the first. All
//! three come from one [`Invocation`]. Edges stay free of telemetry: they build [`Call`]s and
//! read [`Outcome`]s.

use super::emf::{ColdStart, Invocation, Metrics};
use super::prom::PromMetrics;
use crate::api::{ApiError, QaReply, QaRequest};
use crate::models::ModelCatalog;
use futures_util::future::BoxFuture;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

/// One request as an edge hands it over: parsed, or refused while parsing (still reported).
pub struct Call {
    pub request_id: String,
    pub request: Result<QaRequest, ApiError>,
    /// What is left of the invocation's time, if the edge has a deadline.
    pub budget: Option<Duration>,
}

/// A call's answer, or why there is none.
pub type Outcome = Result<QaReply, ApiError>;

/// The service an edge answers through: the request handler behind a [`TelemetryLayer`]
/// (`crate::service::answering`).
pub type Answering = BoxCloneSyncService<Call, Outcome, Infallible>;

/// Reports every call through the inner service.
#[derive(Clone)]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

struct Shared {
    /// EMF lines (under Lambda); `None` writes none.
    emf: Option<Emf>,
    prom: Arc<PromMetrics>,
    /// The models that exist, so metric dimensions never name made-up models: each name from
    /// a request would make a new metric series.
    catalog: ModelCatalog,
}

struct Emf {
    metrics: Metrics,
    /// Taken by the first call.
    cold: Mutex<Option<ColdStart>>,
}

impl TelemetryLayer {
    /// Logs every call and counts it in `prom`; with `emf`, also writes its EMF line, the
    /// process's cold start on the first.
    pub fn new(catalog: ModelCatalog, prom: Arc<PromMetrics>, emf: Option<(Metrics, ColdStart)>) -> Self {
        let emf = emf.map(|(metrics, cold)| Emf { metrics, cold: Mutex::new(Some(cold)) });
        Self { shared: Arc::new(Shared { emf, prom, catalog }) }
    }

    /// Reports a request the edge refused before it reached the service (over a concurrency
    /// limit, past a timeout).
    pub fn refused(&self, request_id: &str, error: &ApiError, total: Duration) {
        self.shared.report(request_id, None, Err(error), total);
    }

    /// The environment was restored from a SnapStart snapshot, ready `restore` after the
    /// restore call returned: its first invocation reports that instead of the init.
    pub fn restored(&self, restore: Duration) {
        if let Some(emf) = &self.shared.emf
            && let Ok(mut cold) = emf.cold.lock()
            && let Some(cold) = cold.as_mut()
        {
            cold.restore = Some(restore);
        }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry { inner, shared: self.shared.clone() }
    }
}

/// The service [`TelemetryLayer`] makes.
#[derive(Clone)]
pub struct Telemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Call> for Telemetry<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Outcome, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let started = Instant::now();
        let request_id = call.request_id.clone();
        let named = call.request.as_ref().ok().map(|request| request.model_type.clone());
        let answering = self.inner.call(call);
        let shared = self.shared.clone();
        Box::pin(async move {
            let outcome = answering.await?;
            shared.report(&request_id, named, outcome.as_ref(), started.elapsed());
            Ok(outcome)
        })
    }
}

impl Shared {
    /// `named`: the model the request named (`Some(None)`: the default), `None` when it did
    /// not parse.
    fn report(&self, request_id: &str, named: Option<Option<String>>, outcome: Result<&QaReply, &ApiError>, total: Duration) {
        match outcome {
            Ok(reply) => tracing::info!(
                request_id,
                model = reply.model_type.as_str(),
                windows = reply.windows,
                ms = total.as_secs_f64() * 1e3,
                "answered"
            ),
            Err(error) => tracing::warn!(request_id, code = error.code(), status = error.status(), %error, "request failed"),
        }
        let model = match (outcome, named) {
            (Ok(reply), _) => Some(reply.model_type.as_str().to_string()),
            (Err(_), Some(Some(name))) if self.catalog.get(&name).is_some() => Some(name),
            (Err(_), Some(Some(_))) => Some("unknown".to_string()),
            (Err(_), Some(None)) => self.catalog.default_name().map(str::to_string),
            (Err(_), None) => None,
        };
        let invocation = Invocation { request_id, model: model.as_deref(), result: outcome, total };
        self.prom.observe(&invocation);
        if let Some(emf) = &self.emf {
            let cold = emf.cold.lock().ok().and_then(|mut cold| cold.take());
            emf.metrics.emit(&emf.metrics.invocation_line(&invocation, cold.as_ref(), super::emf::now_ms()));
        }
    }
}
