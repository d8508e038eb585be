//! The API as people meet it: the OpenAPI document (`docs/openapi.yaml`) held to the Rust types
//! it describes, the Prometheus metrics of `qa-host serve` moving with its requests, and the
//! playground page it serves. (Every response the end-to-end tests receive is also checked
//! against the document: `common::openapi`.)

mod common;

use common::openapi::{contract, pointer_token};
use common::*;
use qa_host::api::{Answer, ApiError, ManyAnswers, OneAnswer, PhaseTimings, QaBatchResponse, QaReply, QaRequest, QaResponse, QaResult};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const ANSWER: &str = "/paths/~1/post/responses";
const REQUEST: &str = "/components/schemas/QaRequest";

/// The JSON schema of `POST /`'s response with `status`.
fn response_schema(status: &str) -> String {
    let (pointer, _) = contract().resolve(&format!("{ANSWER}/{status}")).unwrap_or_else(|| panic!("no {status} response"));
    format!("{pointer}/content/{}/schema", pointer_token("application/json"))
}

/// The error statuses `POST /` documents.
fn error_statuses() -> Vec<String> {
    let responses = contract().document().pointer(ANSWER).and_then(Value::as_object).expect("POST / responses");
    responses.keys().filter(|status| status.as_str() != "200").cloned().collect()
}

#[test]
fn the_document_lists_every_error_code_under_its_own_status_and_no_other() {
    let statuses = error_statuses();
    for error in ApiError::examples() {
        let body = error.body("req-1");
        let own = error.status().to_string();
        assert!(statuses.contains(&own), "{}: status {own} is not documented for POST /", error.code());
        assert_eq!(contract().errors(&response_schema(&own), &body), None, "{}", error.code());
        for other in statuses.iter().filter(|s| **s != own) {
            assert!(contract().errors(&response_schema(other), &body).is_some(), "{} is also allowed under {other}", error.code());
        }
        // A guest's failure names the guest: the same code, and `guest_version`.
        let from_guest = ApiError::from_guest("0123456789ab", error).body("req-2");
        assert_eq!(contract().errors(&response_schema(&own), &from_guest), None, "{from_guest}");
    }
    let documented: BTreeSet<String> = contract()
        .document()
        .pointer("/components/schemas/ErrorCode/enum")
        .and_then(Value::as_array)
        .expect("ErrorCode enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let codes: BTreeSet<String> = ApiError::examples().iter().map(|e| e.code().to_string()).collect();
    assert_eq!(documented, codes, "ErrorCode lists exactly the codes the host has");
}

#[test]
fn the_request_schema_has_the_request_s_fields_and_the_host_s_ranges() {
    let schema = contract().document().pointer(REQUEST).expect("QaRequest schema").clone();
    let properties = schema["properties"].as_object().expect("properties");
    // Every field the request type reads, and no other.
    let mut full = QaRequest::new("q", "c");
    (full.model_type, full.top_k, full.max_answer_len, full.max_seq_len, full.doc_stride) =
        (Some("m".into()), Some(1), Some(1), Some(64), Some(1));
    (full.handle_impossible_answer, full.decoding) = (Some(true), Some(qa_host::guest::Decoding::Pipeline));
    let mut fields: BTreeSet<String> = serde_json::to_value(&full).unwrap().as_object().unwrap().keys().cloned().collect();
    fields.extend(serde_json::to_value(QaRequest::many(vec!["q".into()], "c")).unwrap().as_object().unwrap().keys().cloned());
    assert_eq!(properties.keys().cloned().collect::<BTreeSet<_>>(), fields);

    // Each documented integer range is the one the host enforces: the bounds pass, one past
    // them is `invalid_field`.
    let check = |field: &str, value: i64| {
        let body = json!({"question": "q", "context": "c", field: value}).to_string();
        QaRequest::from_json(body.as_bytes()).and_then(|request| request.validate()).map_err(|e| e.code())
    };
    let mut ranged = 0;
    for (field, property) in properties.iter().filter(|(_, p)| p["type"].as_array().is_some_and(|t| t.contains(&json!("integer")))) {
        let (min, max) = (property["minimum"].as_i64().expect(field), property["maximum"].as_i64().expect(field));
        assert_eq!((check(field, min), check(field, max)), (Ok(()), Ok(())), "{field} {min}..={max}");
        assert_eq!((check(field, min - 1), check(field, max + 1)), (Err("invalid_field"), Err("invalid_field")), "{field}");
        ranged += 1;
    }
    assert_eq!(ranged, 4, "top_k, max_answer_len, max_seq_len, doc_stride");
    use qa_host::api::limits;
    assert_eq!(properties["questions"]["maxItems"], limits::MAX_QUESTIONS);
    assert_eq!(properties["question"]["maxLength"], limits::MAX_QUESTION_BYTES);
    assert_eq!(properties["context"]["maxLength"], limits::MAX_CONTEXT_BYTES);
    let mut decodings: Vec<Value> = qa_host::guest::Decoding::ALL.iter().map(|d| json!(d.name())).collect();
    decodings.push(Value::Null);
    assert_eq!(properties["decoding"]["enum"], json!(decodings));

    // The document's examples are requests the host takes, and the schema takes them too.
    let examples = contract().document().pointer("/paths/~1/post/requestBody/content/application~1json/examples").unwrap();
    for (name, example) in examples.as_object().unwrap() {
        let value = &example["value"];
        let parsed = QaRequest::from_json(value.to_string().as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        parsed.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(contract().errors(REQUEST, value), None, "{name}");
    }
    // Blank is what the host trims away: Unicode white space, every such character and no other.
    for c in (0..=0x3100).chain([0xFEFF]).filter_map(char::from_u32) {
        for field in ["question", "context"] {
            let mut body = json!({"question": "q", "context": "c"});
            body[field] = json!(c.to_string());
            assert_eq!(contract().errors(REQUEST, &body).is_some(), c.is_whitespace(), "{field} {c:?}");
        }
    }
    // `question` or `questions`, never both, never neither, never null; a null option is left
    // out; a count may be written 3.0: as the host decides.
    for (body, valid) in [
        (json!({"question": "q", "context": "c"}), true),
        (json!({"questions": ["q"], "context": "c"}), true),
        (json!({"question": "q", "questions": ["q"], "context": "c"}), false),
        (json!({"question": null, "questions": ["q"], "context": "c"}), false),
        (json!({"context": "c"}), false),
        (json!({"question": " ", "context": "c"}), false),
        (json!({"question": "q", "context": "c", "top_k": null, "decoding": null, "model_type": null}), true),
        (json!({"question": "q", "context": "c", "top_k": 3.0}), true),
        (json!({"question": "q", "context": "c", "top_k": 1.5}), false),
    ] {
        let host = QaRequest::from_json(body.to_string().as_bytes()).and_then(|r| r.validate()).is_ok();
        assert_eq!((contract().errors(REQUEST, &body).is_none(), host), (valid, valid), "{body}");
    }
}

/// API Gateway validates request bodies against models in JSON Schema draft 4 (and imports
/// OpenAPI 3.0, not 3.1): the request schema keeps to what draft 4 has, so it can be given to
/// API Gateway as it is (docs/testing.md says how).
#[test]
fn the_request_schema_keeps_to_json_schema_draft_4() {
    const DRAFT_4: &[&str] = &[
        "type",
        "properties",
        "required",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "enum",
        "description",
        "title",
        "additionalProperties",
    ];
    fn walk(schema: &Value, at: &str) {
        for (keyword, value) in schema.as_object().unwrap_or_else(|| panic!("{at} is not a schema")) {
            assert!(DRAFT_4.contains(&keyword.as_str()), "{at}: `{keyword}` is not draft 4");
            match keyword.as_str() {
                "type" => assert!(value.is_string() || value.is_array(), "{at}: `type` is a name or a list of names"),
                "properties" => value.as_object().unwrap().iter().for_each(|(name, s)| walk(s, &format!("{at}/{name}"))),
                "oneOf" | "anyOf" | "allOf" => value.as_array().unwrap().iter().for_each(|s| walk(s, &format!("{at}/{keyword}"))),
                "items" | "not" => walk(value, &format!("{at}/{keyword}")),
                _ => {}
            }
        }
    }
    walk(contract().document().pointer(REQUEST).unwrap(), REQUEST);
}

#[test]
fn responses_built_from_the_rust_types_are_what_the_document_describes() {
    let span = Answer { text: "1886".into(), score: 0.97, start: 95, end: 99 };
    let timings = PhaseTimings { fetch: 0.1, guest: 20.0, tokenize: 1.0, inference: 17.0, decode: 0.5, total: 21.0 };
    let one = QaReply::from(QaResponse {
        model_type: "nlp1".into(),
        body: OneAnswer { question: "When?".into(), answer: "1886".into(), score: 0.97, start: 95, end: 99, answers: vec![span.clone()] },
        windows: 1,
        model_version: "image".into(),
        guest_version: "0123456789ab".into(),
        timings_ms: timings.clone(),
        model_loaded: true,
    });
    let many = QaReply::from(QaBatchResponse {
        model_type: "nlp1".into(),
        body: ManyAnswers {
            results: vec![QaResult::answered("When?".into(), vec![span]), QaResult::failed(" ".into(), &ApiError::EmptyQuestion)],
        },
        windows: 1,
        model_version: "image".into(),
        guest_version: "0123456789ab".into(),
        timings_ms: timings,
        model_loaded: false,
    });
    for reply in [one, many] {
        let body = serde_json::to_value(&reply).unwrap();
        assert_eq!(contract().errors(&response_schema("200"), &body), None, "{body}");
    }
}

/// The samples of the metrics text: series (name and labels) to value.
fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (key, value) = l.split_once('=').unwrap_or_else(|| panic!("not a label: {l} in {line}"));
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a value: {line}"));
        samples.insert((name.to_string(), labels), value);
    }
    samples
}

/// Reads one series of a scrape (0 when it is not there yet).
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    fn of(server: &Serving) -> Self {
        let (status, text) = server.get("/metrics");
        assert_eq!(status, 200, "{text}");
        Scrape(samples(&text))
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.get(&(name.to_string(), labels)).copied().unwrap_or(0.0)
    }
}

#[test]
fn metrics_count_requests_by_status_and_code_and_time_their_phases() {
    let server = Serving::start(&qa_guest(), &[("QA_PRELOAD", "nlp1")]);
    let before = Scrape::of(&server);
    let model = [("model", "nlp1")];
    assert_eq!(before.get("qa_guest_info", &[("version", &guest_version(&qa_guest()))]), 1.0, "the serving guest");
    assert_eq!(before.get("qa_models_loaded", &[]), 1.0, "nlp1 was preloaded");
    assert!(before.get("qa_models_available", &[]) >= 1.0);

    let (status, answered) = server.post(benz_request().to_string());
    assert_eq!(status, 200, "{answered}");
    let mut blank = benz_request();
    blank["question"] = " ".into();
    assert_eq!(server.post(blank.to_string()).0, 400);
    let mut unknown = benz_request();
    unknown["model_type"] = "nlp9".into();
    assert_eq!(server.post(unknown.to_string()).0, 404);
    assert_eq!(server.post("{not json").0, 400);

    let after = Scrape::of(&server);
    let moved = |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(moved("qa_requests_total", &[("model", "nlp1"), ("status", "200"), ("code", "ok")]), 1.0);
    assert_eq!(moved("qa_requests_total", &[("model", "nlp1"), ("status", "400"), ("code", "empty_question")]), 1.0);
    assert_eq!(moved("qa_requests_total", &[("model", "unknown"), ("status", "404"), ("code", "unknown_model")]), 1.0);
    assert_eq!(moved("qa_requests_total", &[("model", "none"), ("status", "400"), ("code", "bad_json")]), 1.0);
    // Every request is timed end to end; the answered one's guest call, inference and windows too.
    assert_eq!(moved("qa_request_duration_seconds_count", &model), 2.0);
    assert_eq!(moved("qa_guest_duration_seconds_count", &model), 1.0);
    assert_eq!(moved("qa_inference_duration_seconds_count", &model), 1.0);
    assert_eq!(moved("qa_request_windows_count", &model), 1.0);
    assert_eq!(moved("qa_request_windows_sum", &model), answered["windows"].as_f64().unwrap());
    // The same measurements as the response's: its guest and inference time, to the histogram's sum.
    let seconds = |key: &str| answered["timings_ms"][key].as_f64().unwrap() / 1e3;
    assert!((moved("qa_guest_duration_seconds_sum", &model) - seconds("guest")).abs() < 1e-9);
    assert!((moved("qa_inference_duration_seconds_sum", &model) - seconds("inference")).abs() < 1e-9);
    assert_eq!(moved("qa_model_cache_requests_total", &[("model", "nlp1"), ("result", "hit")]), 1.0, "preloaded: a hit");
    let buckets = after.0.keys().filter(|(name, _)| name == "qa_request_duration_seconds_bucket").count();
    assert!(buckets > 10, "a latency histogram has its buckets: {buckets}");
}

/// The rollout's state in `/metrics` is the one `/health` shows, from the same records: with
/// the serving guest as its own shadow, every shadow call agrees.
#[test]
fn metrics_show_the_candidate_its_state_and_its_shadow_agreement() {
    // The shadow lane runs at nice 19; on a 2-core machine the host's background snapshot of
    // both guests (~10 s on both cores at normal priority) can starve it past the default 5 s
    // shadow deadline. This test is about agreement, so the shadow gets the most time the
    // host allows (half the 30 s guest deadline). On a cold compile cache that was not enough
    // (a cold CI run, 2026-12-08: compiling the instrumented guest and the snapshots took 12-14 s
    // of both cores beside the shadow's first call, which ended at 15 s): a host without the
    // shadow preloads the model first, so both guests' artifacts come from the tests' cache.
    drop(Serving::start(&qa_guest(), &[("QA_PRELOAD", "nlp1")]));
    let server = Serving::start(
        &qa_guest(),
        &[("QA_GUEST_SHADOW", qa_guest().display().to_string()), ("QA_GUEST_SHADOW_DEADLINE_MS", "60000".into())],
    );
    let version = guest_version(&qa_guest());
    assert_eq!(server.post(benz_request().to_string()).0, 200);
    server.process.wait_for_log("shadow compared", std::time::Duration::from_secs(120));
    let scrape = Scrape::of(&server);
    assert_eq!(scrape.get("qa_candidate_guest_info", &[("version", &version), ("mode", "shadow")]), 1.0);
    assert_eq!(scrape.get("qa_rollout_state", &[("mode", "shadow"), ("state", "taking_part")]), 1.0);
    assert_eq!(scrape.get("qa_shadow_comparisons_total", &[("agree", "true")]), 1.0);
    assert_eq!(scrape.get("qa_shadow_agreement_ratio", &[("candidate", &version)]), 1.0);
    assert_eq!(scrape.get("qa_rollout_guest_calls_total", &[("guest", "serving"), ("result", "ok")]), 1.0);
    assert_eq!(scrape.get("qa_rollout_guest_calls_total", &[("guest", "candidate"), ("result", "ok")]), 1.0);
    let health = server.health();
    assert_eq!((health["rollout"]["shadow_agreement"].as_f64(), health["rollout"]["state"].as_str()), (Some(1.0), Some("taking part")));
}

#[test]
fn the_playground_is_one_page_that_talks_only_to_its_server_and_knows_every_error_code() {
    let server = Serving::start(&misbehaving_guest(), &[] as &[(&str, &str)]);
    let response = http().get(&format!("{}/", server.base)).call().expect("GET /");
    let policy = response.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (status, page) = api_response("GET", "/", response);
    assert_eq!(status, 200);
    for directive in ["default-src 'none'", "connect-src 'self'", "script-src 'sha256-", "style-src 'sha256-", "form-action 'none'"] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    // Nothing from elsewhere: no address in the page but the API's own relative routes.
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "the page names another server");
    assert_eq!(page.matches("<script").count(), 1, "one inline script, no script files");
    for error in ApiError::examples() {
        assert!(page.contains(&format!("\n  {}: \"", error.code())), "the playground has no message for {}", error.code());
    }
    let context = benz_request()["context"].as_str().unwrap().to_string();
    assert!(page.contains(&format!(">{context}</textarea>")), "the context box holds the Benz paragraph of fixtures/benz.json");
}
