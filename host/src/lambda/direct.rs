//! Direct invokes (`aws lambda invoke`, Step Functions, another function): the event is the
//! request itself and the response is the answer itself, with an error's HTTP status in
//! `error.status`.

use super::trigger::{Trigger, single};
use crate::api::{ApiError, QaReply, QaRequest};
use serde_json::Value;

#[derive(Debug)]
pub struct Direct;

impl Trigger for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn recognizes(&self, _event: &Value) -> bool {
        true
    }

    fn requests(&self, event: Value) -> Vec<Result<QaRequest, ApiError>> {
        vec![serde_json::from_value(event).map_err(|e| ApiError::InvalidField(e.to_string()))]
    }

    fn respond(&self, results: Vec<Result<QaReply, ApiError>>, request_id: &str) -> Value {
        match single(results) {
            Ok(reply) => serde_json::to_value(reply).unwrap_or(Value::Null),
            Err(error) => {
                let mut body = error.body(request_id);
                if let Some(fields) = body.get_mut("error").and_then(Value::as_object_mut) {
                    fields.insert("status".into(), error.status().into());
                }
                body
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_event_is_the_request_and_an_error_carries_its_status() {
        let body = json!({"model_type": "nlp1", "question": "When?", "context": "In 1886."});
        let expected: QaRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(Direct.requests(body).pop().unwrap().unwrap(), expected);
        let response = Direct.respond(vec![Err(ApiError::EmptyQuestion)], "r");
        assert!(response.get("statusCode").is_none());
        assert_eq!(response["error"]["status"], 400);
        assert_eq!(response["error"]["code"], "empty_question");
        for bad in [json!({"question": "q"}), json!([1, 2, 3])] {
            assert_eq!(Direct.requests(bad).pop().unwrap().unwrap_err().code(), "invalid_field");
        }
    }
}
