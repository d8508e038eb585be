//! The Lambda edge: `qa-host` as a custom-runtime bootstrap. Events arrive through the
//! Lambda Runtime API (`lambda_runtime`); the [`trigger`] that recognizes an event turns it
//! into requests, the one service answers each through the telemetry layer (log and metric
//! lines), and the trigger turns the results into the response. A bad event gets an error
//! response; the runtime loop never ends because of one.
//!
//! Under Lambda Managed Instances one environment takes `AWS_LAMBDA_MAX_CONCURRENCY`
//! invocations at once (one Runtime API poller each); every invocation keeps its own deadline
//! and request id, in its span, its log lines and its metric line. With SnapStart the
//! [`snapstart`] hooks run around the snapshot.

mod direct;
pub mod http;
mod snapstart;
pub mod trigger;

use crate::service::QaService;
use crate::service::answering;
use crate::telemetry::emf::ColdStart;
use crate::telemetry::layer::{Answering, Call, TelemetryLayer};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tower::ServiceExt;
use tracing::Instrument;

/// Time kept back from the invocation's deadline so a slow request ends with a clean error
/// response instead of a Lambda timeout.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Serves invocations until the runtime API goes away: as many at once as Lambda sends the
/// environment (`AWS_LAMBDA_MAX_CONCURRENCY`, one at a time when unset), after the SnapStart
/// lifecycle when the environment is made from a snapshot. `process_started` is when the
/// process began, for the cold-start metrics of the first invocation.
pub async fn run(service: Arc<QaService>, process_started: Instant) -> Result<(), lambda_runtime::Error> {
    let (guest_origin, guest_load) = service.guest_load();
    let cold = ColdStart { init: process_started.elapsed(), guest_load, guest_origin, restore: None };
    let telemetry = TelemetryLayer::new(service.catalog().clone(), service.prom().clone(), Some((service.metrics().clone(), cold)));
    let snapshot = Arc::new(snapstart::Snapshot { service: service.clone(), telemetry: telemetry.clone() });
    let answer = answering(service, telemetry);
    let handler = service_fn(move |event: LambdaEvent<Value>| {
        let answer = answer.clone();
        async move {
            let span = tracing::info_span!("invoke", request_id = %event.context.request_id);
            Ok::<Value, lambda_runtime::Error>(handle(answer, event).instrument(span).await)
        }
    });
    lambda_runtime::Runtime::new(handler)
        .layer(lambda_runtime::layers::TracingLayer::new())
        .register_snapstart_resource(snapshot)
        .run_concurrent()
        .await
}

/// One invocation: its trigger's requests answered in order, each within what is left of
/// the invocation's time.
async fn handle(answer: Answering, event: LambdaEvent<Value>) -> Value {
    let request_id = event.context.request_id;
    let trigger = trigger::recognize(&event.payload);
    let mut results = Vec::new();
    for request in trigger.requests(event.payload) {
        let budget = remaining(event.context.deadline).map(|left| left.saturating_sub(DEADLINE_MARGIN));
        let call = Call { request_id: request_id.clone(), request, budget };
        let Ok(outcome) = answer.clone().oneshot(call).await;
        results.push(outcome);
    }
    trigger.respond(results, &request_id)
}

/// Tells the Lambda Runtime API why the function could not start (`/runtime/init/error`),
/// so Lambda reports the reason with the failed invocation instead of a bare exit. Tried up
/// to three times within about 2 s; failing to report is logged, and the caller exits
/// either way.
pub async fn report_init_error(error_type: &str, message: &str) {
    use lambda_runtime_api_client::{PooledClient, body::Body, build_request};
    let Some(endpoint) = std::env::var("AWS_LAMBDA_RUNTIME_API").ok().and_then(|api| api.parse::<axum::http::Uri>().ok()) else {
        return tracing::error!("no usable AWS_LAMBDA_RUNTIME_API to report the start-up failure to");
    };
    let client = PooledClient::builder().with_endpoint(endpoint).build();
    let diagnostic = serde_json::json!({"errorType": error_type, "errorMessage": message}).to_string();
    for attempt in 1..=3 {
        let request = build_request()
            .method("POST")
            .uri("/2018-06-01/runtime/init/error")
            .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
            .header("Content-Type", "application/json")
            .body(Body::from(diagnostic.clone()));
        let request = match request {
            Ok(request) => request,
            Err(error) => return tracing::error!(%error, "could not build the init error report"),
        };
        match tokio::time::timeout(Duration::from_millis(600), client.call(request)).await {
            Ok(Ok(response)) => {
                return tracing::info!(
                    status = response.status().as_u16(),
                    error_type,
                    "reported the start-up failure to the Lambda Runtime API"
                );
            }
            Ok(Err(error)) => tracing::warn!(attempt, %error, "could not report the start-up failure to the Lambda Runtime API"),
            Err(_) => tracing::warn!(attempt, "the Lambda Runtime API did not take the start-up failure report within 600 ms"),
        }
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
    }
    tracing::error!("gave up reporting the start-up failure to the Lambda Runtime API");
}

/// Time left before the invocation's deadline. Lambda sends milliseconds since the epoch;
/// cargo-lambda's emulator sends the timeout itself (600000), so values before 2001 are
/// read as a duration.
fn remaining(deadline_ms: u64) -> Option<Duration> {
    const EPOCH_MS_2001: u64 = 978_307_200_000;
    if deadline_ms == 0 {
        return None;
    }
    if deadline_ms < EPOCH_MS_2001 {
        return Some(Duration::from_millis(deadline_ms));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(Duration::from_millis(deadline_ms).saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_read_as_epoch_milliseconds_or_as_a_duration() {
        assert_eq!(remaining(0), None);
        assert_eq!(remaining(600_000), Some(Duration::from_secs(600)));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let left = remaining(now + 5_000).unwrap();
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(3), "{left:?}");
        assert_eq!(remaining(now - 1_000), Some(Duration::ZERO));
    }

    /// Each request of an invocation gets what is left of it less [`DEADLINE_MARGIN`], the
    /// budget the guest's deadline and a model's fetch are cut to.
    #[tokio::test]
    async fn an_invocation_s_requests_get_the_time_left_less_the_margin() {
        let budgets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = budgets.clone();
        let answer: Answering = tower::util::BoxCloneSyncService::new(tower::service_fn(move |call: Call| {
            seen.lock().unwrap().push(call.budget);
            async { Ok::<crate::telemetry::layer::Outcome, std::convert::Infallible>(Err(crate::api::ApiError::EmptyQuestion)) }
        }));
        let invoke = |deadline: u64| {
            let mut context = lambda_runtime::Context::default();
            (context.request_id, context.deadline) = ("r".into(), deadline);
            handle(answer.clone(), LambdaEvent::new(serde_json::json!({"question": "q", "context": "c"}), context))
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        invoke(now + 2_000).await;
        invoke(600_000).await; // cargo-lambda's emulator: the timeout itself
        invoke(0).await; // no deadline: the configured guest deadline alone
        let budgets = budgets.lock().unwrap().clone();
        let first = budgets[0].expect("a budget under a deadline");
        assert!(first <= Duration::from_millis(1_500) && first > Duration::from_millis(1_300), "{first:?}");
        assert_eq!(budgets[1..], [Some(Duration::from_millis(599_500)), None]);
    }
}
