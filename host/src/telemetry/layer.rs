//! What every answered request reports, as one tower layer around the service that answers it:
//! a log line (answered, or failed with its code) and an EMF metric line ([`super::emf`]), the
//! process's cold start on the first. Edges stay free of telemetry: they build [`Call`]s and
//! read [`Outcome`]s.

use super::emf::{ColdStart, Invocation, Metrics};
use crate::api::{ApiError, QaReply, QaRequest};
use crate::models::ModelCatalog;
use futures_util::future::BoxFuture;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
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

/// Reports every call through the inner service.
#[derive(Clone)]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

struct Shared {
    metrics: Metrics,
    /// Taken by the first call.
    cold: Mutex<Option<ColdStart>>,
    /// The models that exist, so metric dimensions never name made-up models: each name from
    /// a request would make a new CloudWatch metric series.
    catalog: ModelCatalog,
}

impl TelemetryLayer {
    pub fn new(metrics: Metrics, cold: ColdStart, catalog: ModelCatalog) -> Self {
        Self { shared: Arc::new(Shared { metrics, cold: Mutex::new(Some(cold)), catalog }) }
    }

    /// The environment was restored from a SnapStart snapshot, ready `restore` after the
    /// restore call returned: its first invocation reports that instead of the init.
    pub fn restored(&self, restore: Duration) {
        if let Ok(mut cold) = self.shared.cold.lock()
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
            shared.report(&request_id, named, &outcome, started.elapsed());
            Ok(outcome)
        })
    }
}

impl Shared {
    /// `named`: the model the request named (`Some(None)`: the default), `None` when it did
    /// not parse.
    fn report(&self, request_id: &str, named: Option<Option<String>>, outcome: &Outcome, total: Duration) {
        match outcome {
            Ok(reply) => tracing::info!(
                request_id,
                model = reply.model_type(),
                windows = reply.windows(),
                ms = total.as_secs_f64() * 1e3,
                "answered"
            ),
            Err(error) => tracing::warn!(request_id, code = error.code(), status = error.status(), %error, "request failed"),
        }
        let model = match (outcome, named) {
            (Ok(reply), _) => Some(reply.model_type().to_string()),
            (Err(_), Some(Some(name))) if self.catalog.get(&name).is_some() => Some(name),
            (Err(_), Some(Some(_))) => Some("unknown".to_string()),
            (Err(_), Some(None)) => self.catalog.default_name().map(str::to_string),
            (Err(_), None) => None,
        };
        let cold = self.cold.lock().ok().and_then(|mut cold| cold.take());
        let invocation = Invocation { request_id, model: model.as_deref(), result: outcome.as_ref(), total };
        self.metrics.emit(&self.metrics.invocation_line(&invocation, cold.as_ref(), super::emf::now_ms()));
    }
}
