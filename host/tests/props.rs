//! Property-based fuzzing of the Lambda edge (`proptest`), through the library's public API
//! only: the Lambda triggers (`lambda::trigger`) recognizing and parsing arbitrary JSON and
//! well-formed API Gateway 2.0, Function URL, REST 1.0 and body-only events carrying arbitrary
//! bodies, and responding to arbitrary results; `QaRequest::from_json` on arbitrary bytes. Nothing panics; every event
//! shape parses its body exactly as `from_json` parses the bytes; the only parse errors are
//! `bad_json`, `invalid_field` and `body_too_large`; every response is a JSON object whose
//! `statusCode` (HTTP shapes) is one the API documents and whose body is JSON.
//!
//! Needs no model, guest or network. Case count: proptest's default (256 per property), or the
//! `PROPTEST_CASES` environment variable, which proptest's default config reads
//! (`PROPTEST_CASES=5000 cargo test -p qa-host --test props`). A failing case is saved to
//! `host/tests/props.proptest-regressions` (proptest's fallback beside the source, as `host/`
//! has no `lib.rs` above `tests/`) and replayed first on every later run: commit that file when
//! it appears. The hand-written corpora `fixtures/fuzz/host-bodies.json` and
//! `fixtures/bad-requests.json` run in plain tests (`corpus_*`) on every run and the generators
//! draw from them too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use proptest::strategy::LazyJust;
use proptest::test_runner::TestCaseError;
use qa_host::api::{Answer, ApiError, OneAnswer, PhaseTimings, QaReply, QaRequest, QaResponse, Questions, limits};
use qa_host::guest::Decoding;
use qa_host::lambda::trigger::{TRIGGERS, Trigger, recognize};
use serde_json::{Map, Value, json};
use std::sync::LazyLock;

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A kind of Lambda event.
type Source = &'static dyn Trigger;

fn trigger(name: &str) -> Source {
    TRIGGERS.iter().copied().find(|t| t.name() == name).unwrap_or_else(|| panic!("no trigger named {name:?}"))
}

/// The trigger `event` is recognized as, and its one request (every trigger here is an
/// HTTP-shaped or direct one, which carries one).
fn parse(event: Value) -> (Source, Result<QaRequest, ApiError>) {
    let source = recognize(&event);
    let mut requests = source.requests(event);
    assert_eq!(requests.len(), 1, "{source:?} carries one request");
    (source, requests.remove(0))
}

fn respond(source: Source, result: Result<QaReply, ApiError>, request_id: &str) -> Value {
    source.respond(vec![result], request_id)
}

fn is_direct(source: Source) -> bool {
    source.name() == "direct"
}

fn fixture(path: &str) -> Value {
    let path = format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The three HTTP-shaped events of `fixtures/events/`, with the source each must be read as.
static EVENTS: LazyLock<Vec<(&'static str, Value, Source)>> = LazyLock::new(|| {
    [("http-api-v2", "http-api"), ("function-url", "http-api"), ("rest-api-v1", "rest-api")]
        .into_iter()
        .map(|(name, source)| (name, fixture(&format!("events/{name}.json")), trigger(source)))
        .collect()
});

/// A body from a corpus: the text sent, and whether it is sent as is with `isBase64Encoded`.
#[derive(Clone, Debug)]
struct CorpusBody {
    name: String,
    body: String,
    base64: bool,
}

static CORPUS: LazyLock<Vec<CorpusBody>> = LazyLock::new(|| {
    ["fuzz/host-bodies.json", "bad-requests.json"]
        .into_iter()
        // A file without cases would silently test nothing: refuse it.
        .flat_map(|file| {
            let cases = fixture(file)["cases"].as_array().cloned().unwrap_or_default();
            assert!(!cases.is_empty(), "fixtures/{file} has no \"cases\"");
            cases
        })
        .map(|case| CorpusBody {
            name: case["name"].as_str().unwrap_or_default().to_string(),
            body: case["body"].as_str().expect("every corpus case has a string body").to_string(),
            base64: case["base64"].as_bool().unwrap_or(false),
        })
        .collect()
});

// ---------------------------------------------------------------------------------------------
// The invariants.

/// The only errors reading a request can produce.
const PARSE_CODES: &[&str] = &["bad_json", "invalid_field", "body_too_large"];

/// Every status code the API documents.
const STATUSES: &[u64] = &[200, 400, 404, 413, 500, 503];

fn check_parse_error(result: &Result<QaRequest, ApiError>) -> Result<(), TestCaseError> {
    if let Err(error) = result {
        prop_assert!(PARSE_CODES.contains(&error.code()), "unexpected error {} ({error})", error.code());
    }
    Ok(())
}

/// Same request, or errors with the same code.
fn same_outcome(got: &Result<QaRequest, ApiError>, expected: &Result<QaRequest, ApiError>) -> Result<(), TestCaseError> {
    match (got, expected) {
        (Ok(got), Ok(expected)) => prop_assert_eq!(got, expected),
        (Err(got), Err(expected)) => {
            prop_assert_eq!(got.code(), expected.code(), "{} vs {}", got, expected)
        }
        _ => prop_assert!(false, "{got:?} but from_json gives {expected:?}"),
    }
    Ok(())
}

/// Checks `respond(source, result, request_id)` and returns it.
fn check_respond(source: Source, result: Result<QaResponse, ApiError>, request_id: &str) -> Result<Value, TestCaseError> {
    let result = result.map(QaReply::from);
    let expected_status = match &result {
        Ok(_) => 200,
        Err(error) => u64::from(error.status()),
    };
    prop_assert!(STATUSES.contains(&expected_status), "status {expected_status} is not documented");
    let expected_body = match &result {
        Ok(response) => serde_json::to_value(response).expect("a response serializes"),
        Err(error) => error.body(request_id),
    };
    let out = respond(source, result, request_id);
    prop_assert!(out.is_object(), "{source:?} response is not an object: {out}");
    let body = if is_direct(source) {
        prop_assert!(out.get("statusCode").is_none());
        out.clone()
    } else {
        let status = out["statusCode"].as_u64();
        prop_assert_eq!(status, Some(expected_status), "{:?} statusCode in {}", source, out);
        prop_assert_eq!(&out["headers"]["content-type"], "application/json");
        let text = out["body"].as_str();
        prop_assert!(text.is_some(), "{source:?} body is not a string: {out}");
        let body = serde_json::from_str::<Value>(text.unwrap_or_default());
        prop_assert!(body.is_ok(), "{source:?} body is not JSON: {out}");
        body.unwrap_or_default()
    };
    prop_assert!(body.is_object(), "body is not an object: {body}");
    if let Some(error) = expected_body.get("error") {
        prop_assert_eq!(&body["error"]["code"], &error["code"]);
        prop_assert_eq!(&body["error"]["message"], &error["message"]);
        prop_assert_eq!(&body["error"]["request_id"], &json!(request_id));
        if is_direct(source) {
            prop_assert_eq!(body["error"]["status"].as_u64(), Some(expected_status));
        }
    } else {
        // Floats may move by an ULP through text; everything else comes back as it went.
        prop_assert_eq!(&body["Question"], &expected_body["Question"]);
        prop_assert_eq!(&body["Answer"], &expected_body["Answer"]);
        prop_assert_eq!(&body["Model_Type"], &expected_body["Model_Type"]);
        let answers = |v: &Value| v["answers"].as_array().map(|a| a.iter().map(|a| a["text"].clone()).collect::<Vec<_>>());
        prop_assert_eq!(answers(&body), answers(&expected_body));
        prop_assert!(body["score"].is_number() || body["score"].is_null());
    }
    Ok(out)
}

/// A response for a parsed request, as the service would give one.
fn response_for(request: &QaRequest, answers: Vec<Answer>, score: f64) -> QaResponse {
    let best = answers.first().cloned();
    QaResponse {
        model_type: request.model_type.clone().unwrap_or_else(|| "nlp1".into()),
        body: OneAnswer {
            question: match &request.questions {
                Questions::One(question) => question.clone(),
                Questions::Many(_) => String::new(),
            },
            answer: best.as_ref().map(|a| a.text.clone()).unwrap_or_default(),
            score,
            start: best.as_ref().map_or(0, |a| a.start),
            end: best.as_ref().map_or(0, |a| a.end),
            answers,
        },
        windows: 1,
        model_version: "props".into(),
        guest_version: "0123456789ab".into(),
        timings_ms: PhaseTimings { fetch: score, guest: 1.0, tokenize: 0.5, inference: 0.25, decode: 0.1, total: f64::MAX },
        model_loaded: false,
    }
}

/// Parses `event`, checks the outcome against `expected` (when given) and the response built
/// from it.
fn check_event(event: Value, source: Option<Source>, expected: Option<&Result<QaRequest, ApiError>>) -> Result<(), TestCaseError> {
    let (got_source, request) = parse(event);
    if let Some(source) = source {
        prop_assert_eq!(got_source.name(), source.name());
    }
    check_parse_error(&request)?;
    if let Some(expected) = expected {
        same_outcome(&request, expected)?;
    }
    let result = request.map(|r| response_for(&r, vec![Answer { text: r.context.clone(), score: 0.5, start: 0, end: 1 }], 0.5));
    check_respond(got_source, result, "req-props")?;
    Ok(())
}

/// `body` in every event shape, with `isBase64Encoded` as given.
fn shaped(body: &str, base64: bool) -> Vec<(Value, Source)> {
    let mut events: Vec<(Value, Source)> = EVENTS
        .iter()
        .map(|(_, event, source)| {
            let mut event = event.clone();
            event["body"] = json!(body);
            event["isBase64Encoded"] = json!(base64);
            (event, *source)
        })
        .collect();
    events.push((json!({"body": body, "isBase64Encoded": base64}), trigger("sample-test-event")));
    events
}

/// What every shape must make of `body`: `from_json` of its bytes, after base64 decoding.
fn expected_for(body: &str, base64: bool) -> Result<QaRequest, ApiError> {
    if !base64 {
        return QaRequest::from_json(body.as_bytes());
    }
    match STANDARD.decode(body) {
        Ok(bytes) => QaRequest::from_json(&bytes),
        Err(e) => Err(ApiError::BadJson(e.to_string())),
    }
}

fn check_body_in_every_shape(body: &str, base64: bool) -> Result<(), TestCaseError> {
    let expected = expected_for(body, base64);
    check_parse_error(&expected)?;
    for (event, source) in shaped(body, base64) {
        check_event(event, Some(source), Some(&expected))?;
    }
    Ok(())
}

fn check_from_json(bytes: &[u8]) -> Result<(), TestCaseError> {
    let result = QaRequest::from_json(bytes);
    check_parse_error(&result)?;
    if let Ok(request) = result {
        // Not "what it accepts is UTF-8": serde_json skips unknown fields' values without
        // validating them, so `{"x":"\xff","question":..}` is accepted (seed in the
        // regressions file). The fields kept are Strings, so always UTF-8.
        let again = serde_json::to_vec(&request).expect("a request serializes");
        prop_assert_eq!(QaRequest::from_json(&again).ok(), Some(request));
    }
    Ok(())
}

fn fail(name: &str, error: TestCaseError) -> ! {
    panic!("corpus case {name:?}: {error}")
}

// ---------------------------------------------------------------------------------------------
// Generators.

/// Strings that mean something to some part of the parser, beside arbitrary ones.
#[rustfmt::skip]
const STRINGS: &[&str] = &[
    "", " ", "POST", "GET", "post", "HTTP/1.1", "2.0", "1.0", "$default", "/", "application/json", "true", "null",
    "{}", "[]", "{\"question\":\"When?\",\"context\":\"In 1886.\"}", "eyJxdWVzdGlvbiI6IldoZW4/IiwiY29udGV4dCI6IkluIDE4ODYuIn0=",
    "\u{0}", "\u{7f}", "\u{feff}", "😀", "東京", "e\u{301}", "\u{202e}", "\r\n", "a\u{0}b", "%%%", "27/Nov/2026:00:00:00 +0000",
];

/// Keys the event parser looks at, beside arbitrary ones.
#[rustfmt::skip]
const KEYS: &[&str] = &[
    "body", "isBase64Encoded", "question", "context", "model_type", "top_k", "max_answer_len", "handle_impossible_answer",
    "max_seq_len", "doc_stride", "requestContext", "http", "method", "httpMethod", "headers", "multiValueHeaders",
    "queryStringParameters", "multiValueQueryStringParameters", "pathParameters", "stageVariables", "cookies",
    "rawPath", "rawQueryString", "routeKey", "version", "path", "resource", "requestId", "timeEpoch", "identity",
    "authorizer", "sourceIp",
];

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => prop::sample::select(STRINGS).prop_map(str::to_string),
        1 => "[ -~]{0,40}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(KEYS).prop_map(str::to_string), 1 => string()]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..600).prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON numbers are finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
    ]
}

/// Arbitrary JSON, at most 4 levels deep and about 64 nodes.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), string().prop_map(Value::String)];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A request with arbitrary question, context and options.
fn request() -> impl Strategy<Value = QaRequest> {
    let text = prop_oneof![3 => any::<String>(), 1 => prop::sample::select(STRINGS).prop_map(str::to_string)];
    let opt = || prop::option::of(prop_oneof![0u32..600, Just(u32::MAX)]);
    let questions = prop::option::weighted(0.2, prop::collection::vec(text.clone(), 1..4));
    let decoding = prop::option::of(prop_oneof![Just(Decoding::Document), Just(Decoding::Pipeline)]);
    let options = (opt(), opt(), prop::option::of(any::<bool>()), opt(), opt(), decoding);
    (text.clone(), questions, text, prop::option::of(string()), options).prop_map(
        |(question, questions, context, model_type, (top_k, max_answer_len, handle, max_seq_len, doc_stride, decoding))| QaRequest {
            model_type,
            // `question` or `questions`, as a body carries them.
            questions: questions.map_or(Questions::One(question), Questions::Many),
            context,
            top_k,
            max_answer_len,
            handle_impossible_answer: handle,
            max_seq_len,
            doc_stride,
            decoding,
        },
    )
}

/// Bodies as they arrive: arbitrary text, valid requests, corpus bodies, and valid requests
/// cut short or with one character changed.
fn body_text() -> impl Strategy<Value = String> {
    let corpus: Vec<String> = CORPUS.iter().filter(|c| !c.base64).map(|c| c.body.clone()).collect();
    prop_oneof![
        3 => any::<String>(),
        3 => request().prop_map(|r| serde_json::to_string(&r).expect("a request serializes")),
        2 => prop::sample::select(corpus),
        2 => (request(), any::<prop::sample::Index>(), any::<char>(), 0u8..3).prop_map(|(r, at, c, how)| {
            let mut text = serde_json::to_string(&r).expect("a request serializes");
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let at = boundaries[at.index(boundaries.len())];
            match how {
                0 => text.truncate(at),
                1 => text.insert(at, c),
                _ => {
                    if let Some(old) = text[at..].chars().next() {
                        text.replace_range(at..at + old.len_utf8(), c.encode_utf8(&mut [0; 4]));
                    }
                }
            }
            text
        }),
    ]
}

const VALID_BODY: &str = r#"{"question":"When?","context":"In 1886."}"#;

/// An object with some of the keys the event parser looks at, holding arbitrary JSON, and
/// sometimes a `requestContext.http` (the API Gateway 2.0 marker).
fn event_like() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((key(), json_value()), 0..8),
        prop::option::of((json_value(), prop::collection::vec((key(), json_value()), 0..4))),
    )
        .prop_map(|(fields, context)| {
            let mut event: Map<String, Value> = fields.into_iter().collect();
            if let Some((http, rest)) = context {
                let mut context: Map<String, Value> = rest.into_iter().collect();
                context.insert("http".into(), http);
                event.insert("requestContext".into(), Value::Object(context));
            }
            Value::Object(event)
        })
}

/// A fixture event with up to four values (anywhere in it) replaced by arbitrary JSON or
/// removed: reaches the event types' own deserializers (headers, methods, contexts).
fn mutated_event() -> impl Strategy<Value = Value> {
    (0..EVENTS.len(), prop::collection::vec((any::<prop::sample::Index>(), prop::option::of(json_value())), 0..4)).prop_map(
        |(which, edits)| {
            // A valid body, so that edits elsewhere can leave the event acceptable.
            let mut event = EVENTS[which].1.clone();
            event["body"] = json!(VALID_BODY);
            for (at, value) in edits {
                let paths = pointers(&event, "");
                let Some(path) = paths.get(at.index(paths.len().max(1))).cloned() else {
                    continue;
                };
                match value {
                    Some(value) => {
                        if let Some(slot) = event.pointer_mut(&path) {
                            *slot = value;
                        }
                    }
                    None => {
                        let (parent, key) = path.rsplit_once('/').unwrap_or(("", ""));
                        if let Some(Value::Object(map)) = event.pointer_mut(parent) {
                            map.remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                    }
                }
            }
            event
        },
    )
}

/// JSON pointers to every value below `value` (not itself).
fn pointers(value: &Value, prefix: &str) -> Vec<String> {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v)).collect(),
        Value::Array(items) => items.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        _ => vec![],
    };
    children
        .into_iter()
        .flat_map(|(key, child)| {
            let path = format!("{prefix}/{key}");
            let mut below = pointers(child, &path);
            below.insert(0, path);
            below
        })
        .collect()
}

fn api_error() -> impl Strategy<Value = ApiError> {
    let s = string;
    prop_oneof![
        s().prop_map(ApiError::BadJson),
        s().prop_map(ApiError::InvalidField),
        LazyJust::new(|| ApiError::EmptyQuestion),
        LazyJust::new(|| ApiError::EmptyContext),
        (any::<usize>(), any::<usize>()).prop_map(|(len, limit)| ApiError::BodyTooLarge { len, limit }),
        (any::<usize>(), any::<usize>()).prop_map(|(len, limit)| ApiError::QuestionTooLong { len, limit }),
        (any::<usize>(), any::<usize>()).prop_map(|(len, limit)| ApiError::ContextTooLarge { len, limit }),
        (s(), s()).prop_map(|(name, available)| ApiError::UnknownModel { name, available }),
        s().prop_map(ApiError::GuestRejected),
        (s(), s()).prop_map(|(name, reason)| ApiError::ModelNotFound { name, reason }),
        (s(), s()).prop_map(|(name, reason)| ApiError::ModelCorrupt { name, reason }),
        (s(), s()).prop_map(|(name, reason)| ApiError::ModelInvalid { name, reason }),
        (s(), s()).prop_map(|(name, reason)| ApiError::ModelUnavailable { name, reason }),
        s().prop_map(ApiError::Inference),
        s().prop_map(ApiError::GuestTimeout),
        s().prop_map(ApiError::GuestFailed),
        s().prop_map(ApiError::Internal),
    ]
}

/// Any f64, non-finite ones included: a response must stay JSON whatever its scores are.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![3 => 0.0f64..=1.0, 1 => any::<f64>(), 1 => prop::sample::select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, -0.0][..])]
}

fn response() -> impl Strategy<Value = QaResponse> {
    let span = (string(), float(), any::<u32>(), any::<u32>()).prop_map(|(text, score, start, end)| Answer { text, score, start, end });
    (request(), prop::collection::vec(span, 0..4), float()).prop_map(|(request, answers, score)| response_for(&request, answers, score))
}

fn source() -> impl Strategy<Value = Source> {
    prop::sample::select(TRIGGERS.to_vec())
}

// ---------------------------------------------------------------------------------------------
// The hand-written corpora, on every run.

#[test]
fn corpus_bodies_in_every_shape() {
    for case in CORPUS.iter() {
        check_body_in_every_shape(&case.body, case.base64).unwrap_or_else(|e| fail(&case.name, e));
        // Text bodies also go base64-encoded; they must then parse the same.
        if !case.base64 {
            let expected = QaRequest::from_json(case.body.as_bytes());
            for (event, source) in shaped(&STANDARD.encode(&case.body), true) {
                check_event(event, Some(source), Some(&expected)).unwrap_or_else(|e| fail(&case.name, e));
            }
        }
        check_from_json(case.body.as_bytes()).unwrap_or_else(|e| fail(&case.name, e));
    }
}

#[test]
fn corpus_body_over_the_limit_in_every_shape() {
    let body = format!(r#"{{"question":"q","context":"{}"}}"#, "x".repeat(limits::MAX_BODY_BYTES));
    let expected = QaRequest::from_json(body.as_bytes());
    assert_eq!(expected.as_ref().unwrap_err().code(), "body_too_large");
    for base64 in [false, true] {
        let sent = if base64 { STANDARD.encode(&body) } else { body.clone() };
        for (event, source) in shaped(&sent, base64) {
            let (got, request) = parse(event);
            assert_eq!(got.name(), source.name());
            assert_eq!(request.unwrap_err().status(), 413, "{source:?} base64 {base64}");
        }
    }
}

#[test]
fn corpus_events_without_a_body() {
    for (name, event, source) in EVENTS.iter() {
        let mut event = event.clone();
        event.as_object_mut().expect("an event is an object").remove("body");
        check_event(event, Some(*source), None).unwrap_or_else(|e| fail(name, e));
    }
    for event in [json!({}), json!(null), json!([]), json!("body"), json!({"body": null}), json!({"body": {"question": 1}})] {
        check_event(event.clone(), None, None).unwrap_or_else(|e| fail(&event.to_string(), e));
    }
}

// ---------------------------------------------------------------------------------------------
// The properties.

proptest! {
    /// Any JSON at all is an event: parsed without panicking, answered with a response.
    #[test]
    fn arbitrary_json_events(event in prop_oneof![json_value(), event_like()]) {
        check_event(event, None, None)?;
    }

    /// The fixture events with arbitrary parts replaced or removed.
    #[test]
    fn mutated_fixture_events(event in mutated_event()) {
        check_event(event, None, None)?;
    }

    /// Every shape reads a text body exactly as `from_json` reads its bytes.
    #[test]
    fn text_bodies_parse_alike_in_every_shape(body in body_text()) {
        check_body_in_every_shape(&body, false)?;
    }

    /// Arbitrary bytes, base64-encoded with `isBase64Encoded`, parse as `from_json` reads them.
    #[test]
    fn base64_bodies_parse_alike_in_every_shape(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            body_text().prop_map(String::into_bytes),
        ],
    ) {
        check_body_in_every_shape(&STANDARD.encode(&bytes), true)?;
    }

    /// `isBase64Encoded` on text that may or may not be base64 is a `bad_json` error when it
    /// is not, never a panic.
    #[test]
    fn text_claimed_to_be_base64(body in prop_oneof![string(), "[A-Za-z0-9+/=_\\- \n]{0,64}"]) {
        check_body_in_every_shape(&body, true)?;
    }

    /// A valid request comes out of every shape, and as a direct invoke, exactly as it went in.
    #[test]
    fn valid_requests_survive_every_shape(request in request()) {
        let body = serde_json::to_string(&request).expect("a request serializes");
        let expected: Result<QaRequest, ApiError> = Ok(request.clone());
        for (event, source) in shaped(&body, false).into_iter().chain(shaped(&STANDARD.encode(&body), true)) {
            check_event(event, Some(source), Some(&expected))?;
        }
        let object = serde_json::to_value(&request).expect("a request serializes");
        check_event(json!({"body": object}), Some(trigger("sample-test-event")), Some(&expected))?;
        check_event(object, Some(trigger("direct")), Some(&expected))?;
    }

    /// Any result, in any shape, with any request id, becomes a well-formed response.
    #[test]
    fn responses_are_well_formed(
        source in source(),
        result in prop_oneof![response().prop_map(Ok), api_error().prop_map(Err)],
        request_id in string(),
    ) {
        check_respond(source, result, &request_id)?;
    }

    /// `from_json` on arbitrary bytes: no panic, only the three parse errors, and what it
    /// accepts round-trips.
    #[test]
    fn from_json_on_arbitrary_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            body_text().prop_map(String::into_bytes),
            (body_text(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(text, at, byte)| {
                let mut bytes = text.into_bytes();
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            }),
        ],
    ) {
        check_from_json(&bytes)?;
    }
}
