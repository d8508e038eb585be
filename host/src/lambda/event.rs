//! Lambda events in, Lambda responses out: the HTTP-shaped events (API Gateway HTTP API
//! payload 2.0, Lambda Function URLs, API Gateway REST proxy 1.0) and direct invokes, turned
//! into one request body; the answer turned back into the envelope the event's source wants.

use crate::api::{ApiError, QaReply, QaRequest};
use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use base64::Engine as _;
use serde_json::Value;

/// Where an event came from, which decides the response's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// API Gateway HTTP API (payload 2.0) or a Function URL (same shape).
    HttpV2,
    /// API Gateway REST API proxy integration (payload 1.0).
    HttpV1,
    /// The original sample's test event, `{"body": "<json string>"}`: answered with the
    /// sample's HTTP envelope, as the sample did.
    BodyOnly,
    /// A direct invoke with the request itself: answered with the response itself.
    Direct,
}

/// The request carried by an event, or why there is none.
pub fn parse(event: Value) -> (Source, Result<QaRequest, ApiError>) {
    if event.get("requestContext").and_then(|c| c.get("http")).is_some() {
        let body = serde_json::from_value::<ApiGatewayV2httpRequest>(event)
            .map_err(|e| ApiError::InvalidField(format!("not an API Gateway 2.0 event: {e}")))
            .and_then(|e| decode_body(e.body, e.is_base64_encoded));
        return (Source::HttpV2, body.and_then(|b| QaRequest::from_json(&b)));
    }
    if event.get("httpMethod").is_some() {
        let body = serde_json::from_value::<ApiGatewayProxyRequest>(event)
            .map_err(|e| ApiError::InvalidField(format!("not an API Gateway REST proxy event: {e}")))
            .and_then(|e| decode_body(e.body, e.is_base64_encoded));
        return (Source::HttpV1, body.and_then(|b| QaRequest::from_json(&b)));
    }
    if event.get("body").is_some() && event.get("question").is_none() && event.get("questions").is_none() {
        let encoded = event.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false);
        let body = match event.get("body") {
            Some(Value::String(s)) => decode_body(Some(s.clone()), encoded),
            // The body may also arrive as the JSON object itself.
            Some(object @ Value::Object(_)) => Ok(object.to_string().into_bytes()),
            _ => Err(ApiError::InvalidField("\"body\" must be a JSON string".into())),
        };
        return (Source::BodyOnly, body.and_then(|b| QaRequest::from_json(&b)));
    }
    let request = serde_json::from_value(event).map_err(|e| ApiError::InvalidField(e.to_string()));
    (Source::Direct, request)
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

/// The response for `source`: an HTTP envelope with a JSON body for HTTP-shaped events, the
/// bare object for direct invokes (errors there carry their HTTP status in `error.status`).
pub fn respond(source: Source, result: Result<QaReply, ApiError>, request_id: &str) -> Value {
    let (status, body) = match &result {
        Ok(response) => (200, serde_json::to_value(response).unwrap_or(Value::Null)),
        Err(error) => (error.status(), error.body(request_id)),
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let text = Some(Body::Text(body.to_string()));
    let envelope = match source {
        Source::Direct => {
            let mut body = body;
            if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
                error.insert("status".into(), status.into());
            }
            return body;
        }
        Source::HttpV2 => {
            let mut response = ApiGatewayV2httpResponse::default();
            response.status_code = i64::from(status);
            response.headers = headers;
            response.body = text;
            serde_json::to_value(response)
        }
        Source::HttpV1 | Source::BodyOnly => {
            let mut response = ApiGatewayProxyResponse::default();
            response.status_code = i64::from(status);
            response.headers = headers;
            response.body = text;
            serde_json::to_value(response)
        }
    };
    envelope.unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn every_event_shape_yields_the_same_request() {
        let expected: QaRequest = serde_json::from_str(BODY).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(BODY);
        let events = [
            (v2(BODY, false), Source::HttpV2),
            (v2(&b64, true), Source::HttpV2),
            (event("function-url", BODY, false), Source::HttpV2),
            (v1(BODY), Source::HttpV1),
            (json!({"body": BODY}), Source::BodyOnly),
            (serde_json::from_str(BODY).unwrap(), Source::Direct),
        ];
        for (event, source) in events {
            let (got_source, request) = parse(event);
            assert_eq!(got_source, source);
            assert_eq!(request.unwrap(), expected, "{source:?}");
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
        let (_, r) = parse(json!({"question": "q"}));
        assert_eq!(r.unwrap_err().code(), "invalid_field");
        let (_, r) = parse(json!([1, 2, 3]));
        assert_eq!(r.unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn http_events_get_an_envelope_and_direct_invokes_do_not() {
        let error = || Err(ApiError::EmptyQuestion);
        let v2 = respond(Source::HttpV2, error(), "req-1");
        assert_eq!(v2["statusCode"], 400);
        assert_eq!(v2["headers"]["content-type"], "application/json");
        let body: Value = serde_json::from_str(v2["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "empty_question");
        assert_eq!(body["error"]["request_id"], "req-1");
        assert_eq!(respond(Source::HttpV1, error(), "r")["statusCode"], 400);
        assert_eq!(respond(Source::BodyOnly, error(), "r")["statusCode"], 400);
        let direct = respond(Source::Direct, error(), "r");
        assert!(direct.get("statusCode").is_none());
        assert_eq!(direct["error"]["status"], 400);
    }
}
