//! HTTP-shaped events: API Gateway HTTP API (payload 2.0) and Lambda Function URLs (the same
//! shape), the API Gateway REST proxy integration (payload 1.0), and the original sample's test
//! event (`{"body": "<json string>"}`). Each carries one request body, possibly base64, and
//! wants its answer in an HTTP envelope with the error's status.

use super::trigger::{Trigger, single};
use crate::api::{ApiError, QaReply, QaRequest};
use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use base64::Engine as _;
use serde_json::Value;

/// API Gateway HTTP API (payload 2.0) or a Function URL.
#[derive(Debug)]
pub struct HttpApi;

/// API Gateway REST API proxy integration (payload 1.0).
#[derive(Debug)]
pub struct RestApi;

/// The original sample's test event, `{"body": "<json string>"}` (or the object itself as
/// `body`): answered with the REST envelope, as the sample did.
#[derive(Debug)]
pub struct SampleTestEvent;

impl Trigger for HttpApi {
    fn name(&self) -> &'static str {
        "http-api"
    }

    fn recognizes(&self, event: &Value) -> bool {
        event.get("requestContext").and_then(|c| c.get("http")).is_some()
    }

    fn requests(&self, event: Value) -> Vec<Result<QaRequest, ApiError>> {
        let body = serde_json::from_value::<ApiGatewayV2httpRequest>(event)
            .map_err(|e| ApiError::InvalidField(format!("not an API Gateway 2.0 event: {e}")))
            .and_then(|e| decode_body(e.body, e.is_base64_encoded));
        vec![body.and_then(|b| QaRequest::from_json(&b))]
    }

    fn respond(&self, results: Vec<Result<QaReply, ApiError>>, request_id: &str) -> Value {
        let (status, headers, body) = http_parts(single(results), request_id);
        let mut response = ApiGatewayV2httpResponse::default();
        response.status_code = i64::from(status);
        response.headers = headers;
        response.body = Some(body);
        serde_json::to_value(response).unwrap_or(Value::Null)
    }
}

impl Trigger for RestApi {
    fn name(&self) -> &'static str {
        "rest-api"
    }

    fn recognizes(&self, event: &Value) -> bool {
        event.get("httpMethod").is_some()
    }

    fn requests(&self, event: Value) -> Vec<Result<QaRequest, ApiError>> {
        let body = serde_json::from_value::<ApiGatewayProxyRequest>(event)
            .map_err(|e| ApiError::InvalidField(format!("not an API Gateway REST proxy event: {e}")))
            .and_then(|e| decode_body(e.body, e.is_base64_encoded));
        vec![body.and_then(|b| QaRequest::from_json(&b))]
    }

    fn respond(&self, results: Vec<Result<QaReply, ApiError>>, request_id: &str) -> Value {
        rest_envelope(single(results), request_id)
    }
}

impl Trigger for SampleTestEvent {
    fn name(&self) -> &'static str {
        "sample-test-event"
    }

    fn recognizes(&self, event: &Value) -> bool {
        event.get("body").is_some() && event.get("question").is_none() && event.get("questions").is_none()
    }

    fn requests(&self, event: Value) -> Vec<Result<QaRequest, ApiError>> {
        let encoded = event.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false);
        let body = match event.get("body") {
            Some(Value::String(s)) => decode_body(Some(s.clone()), encoded),
            // The body may also arrive as the JSON object itself.
            Some(object @ Value::Object(_)) => Ok(object.to_string().into_bytes()),
            _ => Err(ApiError::InvalidField("\"body\" must be a JSON string".into())),
        };
        vec![body.and_then(|b| QaRequest::from_json(&b))]
    }

    fn respond(&self, results: Vec<Result<QaReply, ApiError>>, request_id: &str) -> Value {
        rest_envelope(single(results), request_id)
    }
}

fn decode_body(body: Option<String>, base64_encoded: bool) -> Result<Vec<u8>, ApiError> {
    let body = body.ok_or_else(|| ApiError::BadJson("the event has no body".into()))?;
    if !base64_encoded {
        return Ok(body.into_bytes());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| ApiError::BadJson(format!("isBase64Encoded is set but the body is not base64: {e}")))
}

/// Status, headers and JSON body of an HTTP response for `result`.
fn http_parts(result: Result<QaReply, ApiError>, request_id: &str) -> (u16, HeaderMap, Body) {
    let (status, body) = match &result {
        Ok(reply) => (200, serde_json::to_value(reply).unwrap_or(Value::Null)),
        Err(error) => (error.status(), error.body(request_id)),
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (status, headers, Body::Text(body.to_string()))
}

fn rest_envelope(result: Result<QaReply, ApiError>, request_id: &str) -> Value {
    let (status, headers, body) = http_parts(result, request_id);
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = i64::from(status);
    response.headers = headers;
    response.body = Some(body);
    serde_json::to_value(response).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lambda::trigger::recognize;
    use serde_json::json;

    const BODY: &str = r#"{"model_type":"nlp1","question":"When?","context":"In 1886."}"#;

    /// An event from `fixtures/events/` (shared with the Lambda integration tests) carrying `body`.
    fn event(name: &str, body: &str, base64: bool) -> Value {
        let path = format!("{}/../fixtures/events/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        event["body"] = json!(body);
        event["isBase64Encoded"] = json!(base64);
        event
    }

    fn v2(body: &str, base64: bool) -> Value {
        event("http-api-v2", body, base64)
    }

    fn v1(body: &str) -> Value {
        event("rest-api-v1", body, false)
    }

    /// The trigger `event` is recognized as, and its one request.
    fn parse(event: Value) -> (&'static str, Result<QaRequest, ApiError>) {
        let trigger = recognize(&event);
        let mut requests = trigger.requests(event);
        assert_eq!(requests.len(), 1, "an HTTP-shaped event carries one request");
        (trigger.name(), requests.remove(0))
    }

    #[test]
    fn every_event_shape_yields_the_same_request() {
        let expected: QaRequest = serde_json::from_str(BODY).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(BODY);
        let events = [
            (v2(BODY, false), "http-api"),
            (v2(&b64, true), "http-api"),
            (event("function-url", BODY, false), "http-api"),
            (v1(BODY), "rest-api"),
            (json!({"body": BODY}), "sample-test-event"),
            (json!({"body": serde_json::from_str::<Value>(BODY).unwrap()}), "sample-test-event"),
            (serde_json::from_str(BODY).unwrap(), "direct"),
        ];
        for (event, name) in events {
            let (got, request) = parse(event);
            assert_eq!(got, name);
            assert_eq!(request.unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn bad_bodies_are_client_errors() {
        let (_, r) = parse(v2("{not json", false));
        assert_eq!(r.unwrap_err().code(), "bad_json");
        let (_, r) = parse(v2("%%% not base64", true));
        assert_eq!(r.unwrap_err().code(), "bad_json");
        // Valid base64 of bytes that are not UTF-8 JSON.
        let (_, r) = parse(v2(&base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x00]), true));
        assert_eq!(r.unwrap_err().status(), 400);
        let (_, r) = parse(json!({"body": 42}));
        assert_eq!(r.unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn http_events_get_an_envelope_with_the_status() {
        let error = || vec![Err(ApiError::EmptyQuestion)];
        let v2 = HttpApi.respond(error(), "req-1");
        assert_eq!(v2["statusCode"], 400);
        assert_eq!(v2["headers"]["content-type"], "application/json");
        let body: Value = serde_json::from_str(v2["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "empty_question");
        assert_eq!(body["error"]["request_id"], "req-1");
        assert_eq!(RestApi.respond(error(), "r")["statusCode"], 400);
        assert_eq!(SampleTestEvent.respond(error(), "r")["statusCode"], 400);
        // An event that somehow carried no request still gets an answer, not a panic.
        assert_eq!(HttpApi.respond(vec![], "r")["statusCode"], 500);
    }
}
