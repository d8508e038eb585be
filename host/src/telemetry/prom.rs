//! Prometheus metrics, `GET /metrics` under `qa-host serve`: the measurements the EMF lines
//! carry under Lambda ([`super::emf`]), kept in a registry and written in the Prometheus text
//! format by the `prometheus` crate.
//!
//! The request series are fed by the telemetry layer from the very [`Invocation`] its EMF line
//! is built from, and the rollout series by the rollout where it writes its guest-call lines.
//! What the server holds (models loaded, which guests run, where the rollout stands) is read
//! when the metrics are scraped ([`Snapshot`]). Every label value is bounded: models are the
//! catalogue's names (or `unknown`, `none`), codes the API's.

use super::emf::Invocation;
use crate::api::RolloutStatus;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Mutex;

/// The content type of [`PromMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Seconds: from a cached answer (milliseconds) to the guest deadline (30 s by default) and past it.
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Windows per request, up to the default `QA_MAX_WINDOWS` (256).
const WINDOW_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// What the server holds at the time of a scrape.
pub struct Snapshot {
    pub models_available: usize,
    pub models_loaded: usize,
    /// The serving guest's version.
    pub guest_version: String,
    pub rollout: Option<RolloutStatus>,
}

/// The registry and every series in it.
pub struct PromMetrics {
    registry: Registry,
    requests: IntCounterVec,
    total: HistogramVec,
    guest: HistogramVec,
    inference: HistogramVec,
    windows: HistogramVec,
    model_cache: IntCounterVec,
    guest_calls: IntCounterVec,
    shadow_comparisons: IntCounterVec,
    models_available: IntGauge,
    models_loaded: IntGauge,
    guest_info: IntGaugeVec,
    candidate_info: IntGaugeVec,
    rollout_state: IntGaugeVec,
    candidate_failure_ratio: GaugeVec,
    shadow_agreement: GaugeVec,
    /// Held by a scrape while it sets the state gauges and gathers, so two scrapes at once
    /// never see each other's half-reset series.
    scrape: Mutex<()>,
}

impl PromMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("qa".into()), None)?;
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| -> Result<HistogramVec, prometheus::Error> {
            let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &["model"])?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let info = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let candidate_failure_ratio = GaugeVec::new(
            Opts::new("rollout_candidate_failure_ratio", "The candidate guest's failure rate over its judging window"),
            &["candidate"],
        )?;
        registry.register(Box::new(candidate_failure_ratio.clone()))?;
        let shadow_agreement = GaugeVec::new(
            Opts::new(
                "shadow_agreement_ratio",
                "Share of the candidate's shadow calls whose best answers had the served ones' text and span",
            ),
            &["candidate"],
        )?;
        registry.register(Box::new(shadow_agreement.clone()))?;
        Ok(Self {
            requests: counter(
                "requests_total",
                "Requests answered or refused, by HTTP status and error code (ok when answered)",
                &["model", "status", "code"],
            )?,
            total: histogram("request_duration_seconds", "Requests end to end, answered or refused", LATENCY_BUCKETS)?,
            guest: histogram("guest_duration_seconds", "The guest call of answered requests", LATENCY_BUCKETS)?,
            inference: histogram("inference_duration_seconds", "Inference inside the guest call of answered requests", LATENCY_BUCKETS)?,
            windows: histogram("request_windows", "Windows the context of an answered request was split into", WINDOW_BUCKETS)?,
            model_cache: counter(
                "model_cache_requests_total",
                "Answered requests that found their model loaded (hit) or loaded it (miss)",
                &["model", "result"],
            )?,
            guest_calls: counter(
                "rollout_guest_calls_total",
                "Guest calls while a candidate guest is configured, by guest and outcome",
                &["guest", "result"],
            )?,
            shadow_comparisons: counter(
                "shadow_comparisons_total",
                "Shadow calls compared with the served answer, by agreement",
                &["agree"],
            )?,
            models_available: gauge("models_available", "Models a request may name")?,
            models_loaded: gauge("models_loaded", "Models loaded now")?,
            guest_info: info("guest_info", "The serving guest (1), by version", &["version"])?,
            candidate_info: info("candidate_guest_info", "The candidate guest (1), by version and mode", &["version", "mode"])?,
            rollout_state: info(
                "rollout_state",
                "Where the candidate stands (1): taking_part, rolled_back or promoted",
                &["mode", "state"],
            )?,
            candidate_failure_ratio,
            shadow_agreement,
            scrape: Mutex::new(()),
            registry,
        })
    }

    /// Counts one request as its EMF line does: `invocation.model` is already bounded.
    pub fn observe(&self, invocation: &Invocation) {
        let model = invocation.model.unwrap_or("none");
        let (status, code) = match invocation.result {
            Ok(_) => ("200".to_string(), "ok"),
            Err(error) => (error.status().to_string(), error.code()),
        };
        self.requests.with_label_values(&[model, status.as_str(), code]).inc();
        self.total.with_label_values(&[model]).observe(invocation.total.as_secs_f64());
        if let Ok(reply) = invocation.result {
            let timings = &reply.timings_ms;
            self.guest.with_label_values(&[model]).observe(timings.guest / 1e3);
            self.inference.with_label_values(&[model]).observe(timings.inference / 1e3);
            self.windows.with_label_values(&[model]).observe(f64::from(reply.windows));
            let result = if reply.model_loaded { "miss" } else { "hit" };
            self.model_cache.with_label_values(&[model, result]).inc();
        }
    }

    /// One guest call the rollout recorded; `guest` is `serving` or `candidate`.
    pub fn guest_call(&self, guest: &str, failed: bool) {
        self.guest_calls.with_label_values(&[guest, if failed { "failed" } else { "ok" }]).inc();
    }

    /// One shadow call compared with the served answer.
    pub fn shadow_compared(&self, agree: bool) {
        self.shadow_comparisons.with_label_values(&[if agree { "true" } else { "false" }]).inc();
    }

    /// The text format of every series, the server's state as of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, prometheus::Error> {
        let _scrape = self.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.models_available.set(count(snapshot.models_available));
        self.models_loaded.set(count(snapshot.models_loaded));
        // Versions change (a swapped guest, a new candidate): only the current ones are shown.
        self.guest_info.reset();
        self.guest_info.with_label_values(&[snapshot.guest_version.as_str()]).set(1);
        self.candidate_info.reset();
        self.rollout_state.reset();
        self.shadow_agreement.reset();
        self.candidate_failure_ratio.reset();
        if let Some(rollout) = &snapshot.rollout {
            self.candidate_info.with_label_values(&[rollout.candidate.as_str(), rollout.mode]).set(1);
            self.rollout_state.with_label_values(&[rollout.mode, &rollout.state.replace(' ', "_")]).set(1);
            self.candidate_failure_ratio.with_label_values(&[rollout.candidate.as_str()]).set(rollout.failure_rate);
            if let Some(agreement) = rollout.shadow_agreement {
                self.shadow_agreement.with_label_values(&[rollout.candidate.as_str()]).set(agreement);
            }
        }
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}
