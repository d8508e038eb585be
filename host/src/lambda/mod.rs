//! The Lambda edge: `qa-host` as a custom-runtime bootstrap. Events arrive through the
//! Lambda Runtime API (`lambda_runtime`), are unwrapped by [`event::parse`], answered by the
//! one service, and wrapped by [`event::respond`]. A bad event gets an error response; the
//! runtime loop never ends because of one.

pub mod event;

use crate::service::QaService;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time kept back from the invocation's deadline so a slow request ends with a clean error
/// response instead of a Lambda timeout.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Serves invocations until the runtime API goes away.
pub async fn run(service: Arc<QaService>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let service = service.clone();
        async move { Ok::<Value, lambda_runtime::Error>(handle(&service, event).await) }
    }))
    .await
}

async fn handle(service: &Arc<QaService>, event: LambdaEvent<Value>) -> Value {
    let request_id = event.context.request_id.clone();
    let budget = remaining(event.context.deadline).map(|left| left.saturating_sub(DEADLINE_MARGIN));
    let (source, request) = event::parse(event.payload);
    let result = match request {
        Ok(request) => service.answer_within(request, budget).await,
        Err(error) => Err(error),
    };
    if let Err(error) = &result {
        tracing::warn!(request_id, code = error.code(), %error, "request failed");
    }
    event::respond(source, result, &request_id)
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
}
