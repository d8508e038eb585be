//! The seam between Lambda events and requests: each kind of event (one file each) says whether
//! an event is its own, which requests it carries, and what Lambda returns for their results.
//! A new trigger (a queue's batch of records, say) is one new implementation, listed in
//! [`TRIGGERS`].

use super::{direct::Direct, http};
use crate::api::{ApiError, QaReply, QaRequest};
use serde_json::Value;

/// One kind of Lambda event.
pub trait Trigger: Sync + std::fmt::Debug {
    /// A short name, for logs and tests.
    fn name(&self) -> &'static str;
    /// Whether `event` is this trigger's (asked in [`TRIGGERS`] order).
    fn recognizes(&self, event: &Value) -> bool;
    /// The requests the event carries, each parsed or refused on its own. An HTTP event
    /// carries one.
    fn requests(&self, event: Value) -> Vec<Result<QaRequest, ApiError>>;
    /// What Lambda returns for the event: `results` in the order of [`Trigger::requests`].
    fn respond(&self, results: Vec<Result<QaReply, ApiError>>, request_id: &str) -> Value;
}

/// Every trigger, most specific first; [`Direct`] takes whatever the others do not.
pub static TRIGGERS: [&dyn Trigger; 4] = [&http::HttpApi, &http::RestApi, &http::SampleTestEvent, &Direct];

/// The trigger `event` came from.
pub fn recognize(event: &Value) -> &'static dyn Trigger {
    TRIGGERS.iter().copied().find(|trigger| trigger.recognizes(event)).unwrap_or(&Direct)
}

/// The one result of an event that carries one request.
pub(super) fn single(results: Vec<Result<QaReply, ApiError>>) -> Result<QaReply, ApiError> {
    results.into_iter().next().unwrap_or_else(|| Err(ApiError::Internal("the event carried no request".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_event_is_some_trigger_s_and_direct_is_the_last_resort() {
        for event in [json!(null), json!([1, 2]), json!("text"), json!({"question": "q"})] {
            assert_eq!(recognize(&event).name(), "direct", "{event}");
        }
        assert_eq!(TRIGGERS.last().map(|t| t.name()), Some("direct"));
    }
}
