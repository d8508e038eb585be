//! The Lambda edge against the real Lambda Runtime API protocol: cargo-lambda's emulator
//! (`cargo lambda watch --only-lambda-apis`) on loopback, the real `qa-host` binary as the
//! bootstrap connected to it, and invocations through the emulator's Invoke API.

mod common;

use common::runtime_api::RuntimeApi;
use common::s3::{S3, TEST_CREDENTIALS};
use common::*;
use serde_json::{Value, json};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn cargo_lambda() -> PathBuf {
    required("CARGO_LAMBDA", workspace().join(".cache/tools-venv/bin/cargo-lambda"))
}

/// The emulator plus one `qa-host` bootstrap connected to it; both killed on drop.
struct Lambda {
    function: Spawned,
    _emulator: Spawned,
    port: u16,
}

impl Lambda {
    /// The emulator plus the test build of `qa-host` with `guest` and the shipped models.
    fn start(guest: PathBuf, env: &[(&str, &str)]) -> Self {
        let mut function = Command::new(env!("CARGO_BIN_EXE_qa-host"));
        function
            .env("ORT_DYLIB_PATH", onnxruntime())
            .env("QA_GUEST", guest)
            .env("QA_MODELS_DIR", models_dir())
            .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
            .envs(env.iter().copied());
        Self::run(function)
    }

    /// The emulator plus `function` as the bootstrap, ready to serve: see [`Lambda::launch`].
    fn run(function: Command) -> Self {
        let lambda = Self::launch(function);
        lambda.function.wait_for_log("guest ready", Duration::from_secs(120));
        lambda
    }

    /// The emulator plus `function` as the bootstrap (see [`as_bootstrap`]).
    fn launch(mut function: Command) -> Self {
        let port = free_port();
        let mut emulator = Command::new(cargo_lambda());
        emulator.args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", &port.to_string()]).current_dir(workspace());
        let emulator = Spawned::start(emulator);
        wait_until("the emulator to listen", Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        as_bootstrap(&mut function, &format!("http://127.0.0.1:{port}/.rt"));
        Lambda { function: Spawned::start(function), _emulator: emulator, port }
    }

    fn wait_for_log(&self, needle: &str) -> String {
        self.function.wait_for_log(needle, Duration::from_secs(120))
    }

    fn logged(&self, needle: &str) -> bool {
        self.function.logged(needle)
    }

    /// Returns once every line the bootstrap logged before this call has reached the test: a
    /// refused invocation's `request failed` line, carrying the id it answered with, comes after
    /// them (see `common::log_barrier`).
    fn flush_log(&self) {
        let refused = envelope_body(&self.invoke(&http_v2(r#"{"question": " ", "context": "log barrier"}"#, false)), 400);
        let request_id = refused["error"]["request_id"].as_str().expect("a refused request has an id");
        self.function.wait_for_log(request_id, Duration::from_secs(10));
    }

    fn invoke(&self, event: &Value) -> Value {
        let response = http()
            .post(&format!("http://127.0.0.1:{}/2015-03-31/functions/_/invocations", self.port))
            .send(event.to_string())
            .expect("invoke through the emulator");
        json_body(response).1
    }
}

/// Makes `function` a bootstrap of the Runtime API at `api`: its environment becomes PATH,
/// the variables Lambda sets and what `function` already sets itself.
fn as_bootstrap(function: &mut Command, api: &str) {
    let given: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        function.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))).collect();
    // Variables `function` removes stay removed (`QA_LOG`, to test Lambda's own log level).
    let removed: Vec<std::ffi::OsString> = function.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_owned()).collect();
    function
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("QA_LOG", "info")
        .envs(given);
    for key in removed {
        function.env_remove(key);
    }
}

/// An event from `fixtures/events/` carrying `body`.
fn event(name: &str, body: &str, base64: bool) -> Value {
    let text = std::fs::read_to_string(workspace().join(format!("fixtures/events/{name}.json"))).unwrap();
    let mut event: Value = serde_json::from_str(&text).unwrap();
    event["body"] = json!(body);
    event["isBase64Encoded"] = json!(base64);
    event
}

fn http_v2(body: &str, base64: bool) -> Value {
    event("http-api-v2", body, base64)
}

fn function_url(body: &str) -> Value {
    event("function-url", body, false)
}

fn rest_v1(body: &str) -> Value {
    event("rest-api-v1", body, false)
}

/// The JSON body of an HTTP envelope, checking the envelope on the way.
fn envelope_body(response: &Value, status: u16) -> Value {
    assert_eq!(response["statusCode"], status, "{response}");
    assert_eq!(response["headers"]["content-type"], "application/json", "{response}");
    serde_json::from_str(response["body"].as_str().expect("body is a string")).expect("body is JSON")
}

#[test]
fn every_event_shape_is_answered_in_its_own_envelope() {
    let lambda = Lambda::start(qa_guest(), &[("QA_PRELOAD", "nlp1")]);
    let body = benz_request().to_string();
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&body);
    for (name, event) in [
        ("http api 2.0", http_v2(&body, false)),
        ("http api 2.0, base64 body", http_v2(&encoded, true)),
        ("function url", function_url(&body)),
        ("rest api 1.0", rest_v1(&body)),
        ("sample test event", json!({"body": body})),
    ] {
        let answer = envelope_body(&lambda.invoke(&event), 200);
        assert_eq!(answer["Answer"], "1886", "{name}");
        assert_eq!(answer["Model_Type"], "nlp1", "{name}");
    }
    let direct = lambda.invoke(&benz_request());
    assert_eq!(direct["Answer"], "1886", "direct invoke returns the bare response: {direct}");
    assert!(direct.get("statusCode").is_none());
}

/// `questions` through every event shape: one result per question, a bad question failing
/// only its entry, in the event's own envelope.
#[test]
fn many_questions_are_answered_through_every_event_shape() {
    let lambda = Lambda::start(qa_guest(), &[("QA_PRELOAD", "nlp1")]);
    let request = json!({"questions": sample_questions(), "context": benz_request()["context"]});
    let body = request.to_string();
    let check = |name: &str, response: &Value| {
        let results = response["results"].as_array().unwrap_or_else(|| panic!("{name}: no results in {response}"));
        assert_eq!(results.len(), sample_questions().len(), "{name}");
        assert_eq!(results[0]["Answer"], "1886", "{name}");
        for (result, error) in results.iter().zip(SAMPLE_QUESTION_ERRORS) {
            assert_eq!(result["error"]["code"].as_str(), error, "{name}: {result}");
            if let Some(code) = error {
                // The entry's error is the whole-request error's body: a message and its status.
                let status = if code == "question_too_long" { 413 } else { 400 };
                assert!(result["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {result}");
                assert_eq!(result["error"]["status"], status, "{name}: {result}");
            }
        }
    };
    for (name, event) in [
        ("http api 2.0", http_v2(&body, false)),
        ("function url", function_url(&body)),
        ("rest api 1.0", rest_v1(&body)),
        ("sample test event", json!({"body": body})),
    ] {
        check(name, &envelope_body(&lambda.invoke(&event), 200));
    }
    check("direct invoke", &lambda.invoke(&request));
}

#[test]
fn each_error_class_has_its_status_and_code_and_the_runtime_keeps_serving() {
    let lambda = Lambda::start(qa_guest(), &[("QA_MODELS", "unmounted=efs:/mnt-not-mounted/lambda/models/x")]);
    let huge = json!({"question": "q", "context": "x".repeat(300_000)}).to_string();
    // The documented maximum context, needing far more windows than the budget, and a body over
    // the 1 MiB limit.
    let flood = json!({"question": "q", "context": "a ".repeat(100_000)}).to_string();
    let oversized = json!({"question": "q", "context": "x".repeat(2 << 20)}).to_string();
    let cases = [
        (http_v2(&flood, false), 413, "too_many_windows"),
        (http_v2(&oversized, false), 413, "body_too_large"),
        (http_v2("{oops", false), 400, "bad_json"),
        (http_v2(r#"{"question": 1, "context": "c"}"#, false), 400, "invalid_field"),
        (http_v2("%%%", true), 400, "bad_json"),
        (rest_v1(r#"{"model_type": "nlp404", "question": "q", "context": "c"}"#), 404, "unknown_model"),
        (function_url(&huge), 413, "context_too_large"),
        (json!({"body": r#"{"question": " ", "context": "c"}"#}), 400, "empty_question"),
        (http_v2(r#"{"model_type": "unmounted", "question": "q", "context": "c"}"#, false), 503, "model_unavailable"),
    ];
    for (event, status, code) in cases {
        let body = envelope_body(&lambda.invoke(&event), status);
        assert_eq!(body["error"]["code"], code);
        assert!(!body["error"]["request_id"].as_str().unwrap().is_empty());
    }
    let direct = lambda.invoke(&json!({"question": "q"}));
    assert_eq!((&direct["error"]["code"], &direct["error"]["status"]), (&json!("invalid_field"), &json!(400)));
    let answer = envelope_body(&lambda.invoke(&http_v2(&benz_request().to_string(), false)), 200);
    assert_eq!(answer["Answer"], "1886");
}

/// Broken model files get their codes through the emulator as through `serve`, and the good
/// model keeps answering: a tokenizer that does not parse (`model_invalid`), a config that
/// leaves out an input the graph needs (`inference_failed`), a missing `model.onnx`
/// (`model_not_found`).
#[test]
fn broken_models_have_their_codes_through_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["nlp1", "badtokenizer", "mismatch", "missing"] {
        link_model(&models_dir().join("nlp1"), &root.join(name));
    }
    // Each file replaced, never written through: they are hard links to the repository's.
    let replace = |path: PathBuf, bytes: &[u8]| {
        std::fs::remove_file(&path).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    replace(root.join("badtokenizer/tokenizer.json"), b"{ this is not a tokenizer");
    replace(root.join("mismatch/config.json"), br#"{"type_vocab_size": 1, "max_position_embeddings": 512}"#);
    std::fs::remove_file(root.join("missing/model.onnx")).unwrap();
    // A directory without `model.onnx` is no model of the models directory; named in the
    // manifest (an EFS entry), it is one whose files are missing.
    let manifest = format!("missing=efs:{}", root.join("missing").display());
    let lambda = Lambda::start(qa_guest(), &[("QA_MODELS_DIR", root.to_str().unwrap()), ("QA_MODELS", &manifest)]);
    let sample = benz_request();
    let ask = |model: &str| {
        let mut request = sample.clone();
        request["model_type"] = json!(model);
        http_v2(&request.to_string(), false)
    };
    for (model, status, code) in
        [("badtokenizer", 500, "model_invalid"), ("mismatch", 500, "inference_failed"), ("missing", 404, "model_not_found")]
    {
        let body = envelope_body(&lambda.invoke(&ask(model)), status);
        assert_eq!(body["error"]["code"], code, "{model}: {body}");
        assert!(!body.to_string().contains(&*root.to_string_lossy()), "{model}: a host path reached the client: {body}");
        assert_eq!(envelope_body(&lambda.invoke(&ask("nlp1")), 200)["Answer"], "1886", "after {model}");
    }
}

/// Model bytes that fail their check (the manifest's SHA-256 here) are `503 model_corrupt`
/// through the emulator too, nothing is cached, and the function keeps serving.
#[test]
fn a_model_that_fails_its_checksum_is_model_corrupt_through_the_emulator() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "pinned/", &models_dir().join("nlp1"));
    let manifest = tempfile::NamedTempFile::new().unwrap();
    let wrong = "0".repeat(64);
    std::fs::write(manifest.path(), json!({"pinned": {"source": "s3://models/pinned/", "sha256": {"model.onnx": wrong}}}).to_string())
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let (manifest_path, cache_path) = (manifest.path().display().to_string(), cache.path().display().to_string());
    let mut env = vec![("AWS_ENDPOINT_URL", endpoint.as_str()), ("QA_MODELS_FILE", &manifest_path), ("QA_MODEL_CACHE_DIR", &cache_path)];
    env.extend(TEST_CREDENTIALS);
    let lambda = Lambda::start(qa_guest(), &env);
    let mut request = benz_request();
    request["model_type"] = json!("pinned");
    for _ in 0..2 {
        let body = envelope_body(&lambda.invoke(&http_v2(&request.to_string(), false)), 503);
        assert_eq!(body["error"]["code"], "model_corrupt", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("SHA-256"), "{body}");
        let cached = std::fs::read_dir(cache.path().join("pinned")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(cached, 0, "nothing cached, no partial left");
    }
    assert_eq!(envelope_body(&lambda.invoke(&http_v2(&benz_request().to_string(), false)), 200)["Answer"], "1886");
}

#[test]
fn a_guest_trap_is_a_500_with_the_request_id_and_the_next_request_succeeds() {
    let lambda = Lambda::start(misbehaving_guest(), &[("QA_GUEST_DEADLINE_MS", "1000")]);
    let trap = envelope_body(&lambda.invoke(&http_v2(r#"{"question": "trap", "context": "c"}"#, false)), 500);
    assert_eq!(trap["error"]["code"], "guest_failed");
    let request_id = trap["error"]["request_id"].as_str().unwrap();
    assert!(!request_id.is_empty() && request_id != "req", "the Lambda request id, not the API's: {request_id}");
    let ok = envelope_body(&lambda.invoke(&http_v2(r#"{"question": "hello", "context": "ok"}"#, false)), 200);
    assert_eq!(ok["Answer"], "ok");
    // A guest that never returns is cut at its deadline, and the runtime keeps serving.
    let spun = envelope_body(&lambda.invoke(&http_v2(r#"{"question": "spin", "context": "c"}"#, false)), 500);
    assert_eq!(spun["error"]["code"], "guest_timeout", "{spun}");
    let ok = envelope_body(&lambda.invoke(&http_v2(r#"{"question": "hello", "context": "ok"}"#, false)), 200);
    assert_eq!(ok["Answer"], "ok");
}

/// A canary that traps on half its inputs is rolled back under Lambda as under `serve`; a
/// shadow runs inside the invocation, compared and recorded, and one that would overrun the
/// response's wait bound (`QA_GUEST_SHADOW_MAX_DELAY_MS`) is cut and not counted.
#[test]
fn a_canary_is_rolled_back_and_a_shadow_runs_within_its_bound_under_the_emulator() {
    let candidate = misbehaving_guest().display().to_string();
    let serving = guest_version(&qa_guest());
    let canary =
        Lambda::start(qa_guest(), &[("QA_GUEST_CANARY", &candidate), ("QA_GUEST_CANARY_PERCENT", "100"), ("QA_ROLLOUT_MIN_CALLS", "4")]);
    let outcomes: Vec<Value> = (0..12)
        .map(|i| {
            let question = if i % 2 == 0 { "trap" } else { "When was the car invented?" };
            let body = json!({"question": question, "context": benz_request()["context"]}).to_string();
            canary.invoke(&http_v2(&body, false))
        })
        .collect();
    let failed: Vec<Value> = outcomes.iter().filter(|r| r["statusCode"] != 200).map(|r| envelope_body(r, 500)).collect();
    assert!((1..=4).contains(&failed.len()), "{} failed: {outcomes:?}", failed.len());
    let canary_version = guest_version(&misbehaving_guest());
    assert!(failed.iter().all(|body| body["error"]["guest_version"] == canary_version.as_str()), "{failed:?}");
    for response in &outcomes[6..] {
        assert_eq!(envelope_body(response, 200)["guest_version"], serving.as_str(), "after the rollback the serving guest answers");
    }
    canary.flush_log();
    assert!(canary.logged("candidate guest rolled back"));
    assert_eq!(metric_lines(&canary.function.lines(), "GuestRollbacks").len(), 1);
    drop(canary);

    let shadow = Lambda::start(qa_guest(), &[("QA_GUEST_SHADOW", &candidate), ("QA_GUEST_SHADOW_MAX_DELAY_MS", "300")]);
    let answered = envelope_body(&shadow.invoke(&http_v2(&benz_request().to_string(), false)), 200);
    assert_eq!((&answered["Answer"], &answered["guest_version"]), (&json!("1886"), &json!(serving)));
    // The candidate spins on "spin": its call is cut at the bound, the response is the serving
    // guest's. The response waits for the shadow call up to the bound, not past it (uncut, the
    // spin would run to the guest's 30 s deadline); 3 s is the slack for the serving guest's
    // answer and the emulator's round trip on a loaded 2-core machine.
    let bound = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let spun = envelope_body(&shadow.invoke(&http_v2(&json!({"question": "spin", "context": "a spinning top"}).to_string(), false)), 200);
    let took = started.elapsed();
    assert_eq!(spun["guest_version"], serving.as_str());
    assert!(
        took >= bound && took < bound + Duration::from_secs(3),
        "the response came {took:?} after the invocation, for a {bound:?} bound"
    );
    shadow.flush_log();
    let compared = metric_lines(&shadow.function.lines(), "ShadowAgreement");
    assert_eq!(compared.len(), 1, "{compared:?}");
    assert_eq!((&compared[0]["ShadowAgreement"], &compared[0]["guest"]), (&json!(0.0), &json!("candidate")));
    assert!(shadow.logged("shadow call cut by the response's wait bound"));
}

#[test]
fn preloaded_models_load_during_init_and_others_on_first_use() {
    let preloading = Lambda::start(qa_guest(), &[("QA_PRELOAD", "nlp1")]);
    let preloaded: Value = serde_json::from_str(&preloading.wait_for_log("preloaded")).unwrap();
    assert!(preloading.logged("model loaded"), "nlp1 was loaded before any invocation");
    // The warm-up question went through the guest: its answer is a span of the warm-up context.
    let warm_answer = preloaded["warm_up_answer"].as_str().unwrap_or_default();
    assert!(!warm_answer.is_empty() && "The guest is warm.".contains(warm_answer), "{preloaded}");
    assert!(preloaded["warm_up_guest_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{preloaded}");
    assert_eq!(preloading.invoke(&benz_request())["Answer"], "1886");

    let lazy = Lambda::start(qa_guest(), &[]);
    lazy.flush_log(); // a refused request loads no model
    assert!(!lazy.logged("model loaded"), "without QA_PRELOAD nothing is loaded at init");
    assert_eq!(lazy.invoke(&benz_request())["Answer"], "1886");
    lazy.wait_for_log("model loaded"); // the first request loaded the model
    assert_eq!(lazy.invoke(&benz_request())["Answer"], "1886");
    lazy.flush_log();
    // The refused barrier request, the first load (a miss), the loaded model (a hit).
    let answered: Vec<Value> = metric_lines(&lazy.function.lines(), "ModelCacheMiss");
    let misses: Vec<&Value> = answered.iter().map(|m| &m["ModelCacheMiss"]).collect();
    assert_eq!(misses, [&json!(1.0), &json!(0.0)], "{answered:?}");
    // The load happened inside the first answered invocation: its line carries that
    // invocation's id through the span, as every line nested in a request does.
    let loaded: Vec<Value> = lazy
        .function
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "model loaded")
        .collect();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[0]["span"]["request_id"], answered[0]["request_id"], "{}", loaded[0]);
}

#[test]
fn the_bad_request_catalogue_gets_the_same_statuses_and_codes_through_lambda() {
    let lambda = Lambda::start(qa_guest(), &[("QA_PRELOAD", "nlp1")]);
    let catalogue: Value = serde_json::from_str(&std::fs::read_to_string(workspace().join("fixtures/bad-requests.json")).unwrap()).unwrap();
    let cases = catalogue["cases"].as_array().unwrap();
    assert!(cases.len() >= 25);
    for case in cases {
        let (name, body) = (case["name"].as_str().unwrap(), case["body"].as_str().unwrap());
        let status = case["status"].as_u64().unwrap() as u16;
        let answer = envelope_body(&lambda.invoke(&http_v2(body, false)), status);
        assert_eq!(answer["error"]["code"], case["code"], "{name}: {answer}");
        assert!(answer["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{name}");
    }
    // Bytes that are not UTF-8, base64-encoded as API Gateway sends binary bodies.
    use base64::Engine as _;
    let not_utf8 = base64::engine::general_purpose::STANDARD.encode(b"{\"question\": \"\xff\xfe\", \"context\": \"c\"}");
    let answer = envelope_body(&lambda.invoke(&http_v2(&not_utf8, true)), 400);
    assert_eq!(answer["error"]["code"], "bad_json", "{answer}");
    assert_eq!(envelope_body(&lambda.invoke(&http_v2(&benz_request().to_string(), false)), 200)["Answer"], "1886");
}

#[test]
fn logs_are_json_lines_with_the_request_id_and_metrics_are_embedded_metric_format() {
    let lambda = Lambda::start(
        qa_guest(),
        &[("QA_PRELOAD", "nlp1"), ("POWERTOOLS_METRICS_NAMESPACE", "QaTests"), ("POWERTOOLS_SERVICE_NAME", "qa-under-test")],
    );
    let body = benz_request().to_string();
    let first = envelope_body(&lambda.invoke(&http_v2(&body, false)), 200);
    assert_eq!(first["Answer"], "1886");
    let refused = envelope_body(&lambda.invoke(&http_v2(r#"{"question": " ", "context": "c"}"#, false)), 400);
    let refused_id = refused["error"]["request_id"].as_str().unwrap().to_string();
    assert_eq!(envelope_body(&lambda.invoke(&http_v2(&body, false)), 200)["Answer"], "1886");

    // Lines reach the test through a pipe and a reader thread; the last may still be on its way.
    wait_until("a metric line per invocation", Duration::from_secs(10), || lambda.function.count("\"_aws\"") >= 3);
    let lines: Vec<Value> = lambda
        .function
        .lines()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    let metrics: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    let logs: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_none()).collect();
    assert_eq!(metrics.len(), 3, "one metric line per invocation");
    for line in &metrics {
        qa_host::telemetry::emf::validate(line).unwrap();
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Namespace"], "QaTests");
        assert_eq!(line["service"], "qa-under-test");
        assert_eq!(line["model"], "nlp1");
    }
    assert_eq!(metrics[0]["ColdStart"], 1.0, "the first invocation reports the cold start");
    assert!(metrics[0]["guest_origin"].as_str().is_some());
    assert!(metrics[1..].iter().all(|l| l.get("ColdStart").is_none()));
    assert_eq!(metrics[0]["ModelCacheHit"], 1.0, "nlp1 was preloaded");
    assert!(metrics[0]["InferenceTime"].as_f64().unwrap() > 0.0);
    assert_eq!((&metrics[1]["Errors"], &metrics[1]["error_code"]), (&json!(1.0), &json!("empty_question")));
    assert_eq!(metrics[1]["request_id"], refused_id.as_str(), "metrics carry the request id the client saw");
    assert_eq!(
        (&metrics[0]["model_version"], &metrics[0]["windows"]),
        (&first["model_version"], &first["windows"]),
        "properties ride along"
    );

    for log in &logs {
        assert!(log["timestamp"].is_string() && log["level"].is_string() && log["message"].is_string(), "{log}");
    }
    let per_request: Vec<&&Value> = logs.iter().filter(|l| l["message"] == "answered" || l["message"] == "request failed").collect();
    assert_eq!(per_request.len(), 3, "one log line per invocation");
    assert_eq!(per_request[0]["model"], "nlp1");
    assert_eq!((&per_request[1]["code"], &per_request[1]["status"]), (&json!("empty_question"), &json!(400)), "{}", per_request[1]);
    for (log, metric) in per_request.iter().zip(&metrics) {
        assert_eq!(log["request_id"], metric["request_id"]);
        assert_eq!(log["span"]["request_id"], metric["request_id"], "the invocation span carries the id to nested lines");
    }
    let ids: std::collections::HashSet<&str> = metrics.iter().map(|m| m["request_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "each invocation has its own id");
}

#[test]
fn the_container_image_layout_runs_as_a_bootstrap_under_the_emulator() {
    // scripts/image-layout.sh lays out this build the way the Dockerfile's final stage does
    // (bootstrap, ONNX Runtime, guest and its precompiled artifact, models) and writes the
    // final stage's ENV, rewritten into that directory.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image");
    let target = PathBuf::from(env!("CARGO_BIN_EXE_qa-host")).parent().unwrap().parent().unwrap().to_path_buf();
    let output = Command::new("bash")
        .arg(workspace().join("scripts/image-layout.sh"))
        .arg("--target-dir")
        .arg(&target)
        .arg("--onnxruntime")
        .arg(onnxruntime())
        .arg(&layout)
        .arg("debug")
        .output()
        .unwrap();
    assert!(output.status.success(), "image-layout.sh failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let env_file = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    let env: Vec<(String, String)> = std::fs::read_to_string(&env_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{key} not in {env:?}"));
    let task_root = PathBuf::from(get("LAMBDA_TASK_ROOT"));
    assert!(task_root.starts_with(&layout) && task_root.join("models/nlp1/model.onnx").is_file());
    assert_eq!(get("QA_PRELOAD"), "nlp1");

    let mut bootstrap = Command::new(PathBuf::from(get("LAMBDA_RUNTIME_DIR")).join("bootstrap"));
    bootstrap.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).current_dir(dir.path());
    let lambda = Lambda::run(bootstrap);
    let ready = lambda.function.wait_for_log("guest ready", Duration::from_secs(10));
    assert!(ready.contains("Shipped"), "the precompiled guest in the layout is used: {ready}");
    lambda.wait_for_log("preloaded");
    // compile-guest also shipped the instrumented guest and the model's snapshot; the
    // preloaded model was prepared from that snapshot, before the first invocation.
    let shipped: Vec<String> =
        std::fs::read_dir(&task_root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for kind in [".instrumented.cwasm", ".prepared-"] {
        assert!(shipped.iter().any(|f| f.starts_with("qa-guest.wasm.") && f.contains(kind)), "no {kind} artifact in {shipped:?}");
    }
    let prepared = lambda.function.wait_for_log("guest prepared for model", Duration::from_secs(10));
    assert!(prepared.contains("nlp1") && prepared.contains("Shipped"), "the shipped snapshot was used: {prepared}");
    let answer = envelope_body(&lambda.invoke(&http_v2(&benz_request().to_string(), false)), 200);
    assert_eq!(answer["Answer"], "1886");
    assert!(lambda.logged("loaded as saved"), "the image's model graph was optimized when built: {:?}", lambda.function.lines());
    assert!(!workspace().join("models/nlp1/model.optimized.json").exists(), "the repository's model is left as it is");
}

/// A bootstrap that cannot start (here: its guest is missing) tells the Runtime API why on
/// `/runtime/init/error` before it exits, instead of exiting without a word.
#[test]
fn a_start_up_failure_is_reported_to_the_runtime_api() {
    let mut function = Command::new(env!("CARGO_BIN_EXE_qa-host"));
    function
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", workspace().join("target/no-such-guest.wasm"))
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", workspace().join("target/qa-cache"));
    let mut lambda = Lambda::launch(function);
    let line = lambda.function.wait_for_log("reported the start-up failure", Duration::from_secs(60));
    assert!(line.contains("\"status\":200"), "the Runtime API took the report: {line}");
    assert!(lambda.logged("no-such-guest.wasm"), "the reason names the missing guest: {:?}", lambda.function.lines());
    let status = lambda.function.child.wait().expect("the bootstrap exits");
    assert_eq!(status.code(), Some(2));

    // A setting that does not parse is a start-up failure too, reported naming the setting.
    let mut function = Command::new(env!("CARGO_BIN_EXE_qa-host"));
    function
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", qa_guest())
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_GUEST_DEADLINE_MS", "30s");
    let mut lambda = Lambda::launch(function);
    let line = lambda.function.wait_for_log("reported the start-up failure", Duration::from_secs(60));
    assert!(line.contains("\"status\":200"), "the Runtime API took the report: {line}");
    assert!(lambda.logged("QA_GUEST_DEADLINE_MS=\\\"30s\\\""), "the reason names the setting: {:?}", lambda.function.lines());
    assert!(line.contains("\"error_type\":\"QaHost.StartFailed\""), "{line}");
    assert_eq!(lambda.function.child.wait().expect("the bootstrap exits").code(), Some(2));

    // No models, a bad manifest, a preload that fails: each reported with its reason.
    let empty = tempfile::tempdir().unwrap();
    let empty_dir = empty.path().display().to_string();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("QA_MODELS_DIR", &empty_dir)], "no models found"),
        (&[("QA_MODELS", "x=ftp://somewhere/")], "s3://, efs: or image:"),
        (&[("QA_PRELOAD", "nope")], "nope"),
    ];
    for (env, reason) in cases {
        let mut function = Command::new(env!("CARGO_BIN_EXE_qa-host"));
        function
            .env("ORT_DYLIB_PATH", onnxruntime())
            .env("QA_GUEST", qa_guest())
            .env("QA_MODELS_DIR", models_dir())
            .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
            .envs(env.iter().copied());
        let mut lambda = Lambda::launch(function);
        let line = lambda.function.wait_for_log("reported the start-up failure", Duration::from_secs(60));
        assert!(line.contains("\"status\":200") && line.contains("QaHost.StartFailed"), "{env:?}: {line}");
        assert!(lambda.logged(reason), "{env:?}: the reason ({reason}) is logged: {:#?}", lambda.function.lines());
        assert_eq!(lambda.function.child.wait().expect("the bootstrap exits").code(), Some(2), "{env:?}");
    }
}

/// The bootstrap with `env` added and `removed` taken away, compiling the guest into `cache`.
/// Not waited for: its "guest ready" line may be filtered out; invocations wait in the
/// emulator until it asks for them.
fn bootstrap(cache: &std::path::Path, env: &[(&str, &str)], removed: &[&str]) -> Lambda {
    let mut function = Command::new(env!("CARGO_BIN_EXE_qa-host"));
    function
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", qa_guest())
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", cache)
        .envs(env.iter().copied());
    for key in removed {
        function.env_remove(key);
    }
    // Named, as a Dockerfile's CMD may; the other tests start it with no command.
    function.arg("lambda");
    Lambda::launch(function)
}

#[test]
fn log_and_metric_variables_choose_format_level_names_and_whether_metrics_are_written() {
    let cache = tempfile::tempdir().unwrap();
    let body = benz_request().to_string();
    let refused_body = r#"{"question": "", "context": "c"}"#;

    // Nothing set: JSON logs at info, metrics under the default names, and a first start that
    // had to compile the guest counts a guest cache miss.
    let defaults = bootstrap(cache.path(), &[], &["QA_LOG"]);
    assert_eq!(envelope_body(&defaults.invoke(&http_v2(&body, false)), 200)["Answer"], "1886");
    defaults.flush_log();
    let lines: Vec<Value> = defaults.function.lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let metric = lines.iter().find(|l| l.get("_aws").is_some()).expect("a metric line");
    qa_host::telemetry::emf::validate(metric).unwrap();
    assert_eq!(metric["_aws"]["CloudWatchMetrics"][0]["Namespace"], qa_host::telemetry::emf::DEFAULT_NAMESPACE);
    assert_eq!(qa_host::telemetry::emf::DEFAULT_NAMESPACE, "QaWasmLambda", "the documented name (docs/configuration.md)");
    assert_eq!(metric["service"], "qa-host");
    assert_eq!(
        (&metric["GuestCacheMiss"], &metric["GuestCacheHit"], &metric["guest_origin"]),
        (&json!(1.0), &json!(0.0), &json!("compiled"))
    );
    assert!(lines.iter().any(|l| l["message"] == "answered" && l["level"] == "INFO"), "info lines are written as JSON");
    drop(defaults);

    // The same cache again: the guest comes from it (a hit). Lambda's own log settings: text
    // lines, warnings only; metric lines stay JSON.
    let lambda_settings = bootstrap(cache.path(), &[("AWS_LAMBDA_LOG_FORMAT", "Text"), ("AWS_LAMBDA_LOG_LEVEL", "WARN")], &["QA_LOG"]);
    assert_eq!(envelope_body(&lambda_settings.invoke(&http_v2(&body, false)), 200)["Answer"], "1886");
    envelope_body(&lambda_settings.invoke(&http_v2(refused_body, false)), 400);
    lambda_settings.flush_log();
    let lines = lambda_settings.function.lines();
    let metrics: Vec<Value> =
        lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|l| l.get("_aws").is_some()).collect();
    assert_eq!((&metrics[0]["GuestCacheHit"], &metrics[0]["guest_origin"]), (&json!(1.0), &json!("cached")), "{}", metrics[0]);
    let failed = lines.iter().find(|l| l.contains("request failed")).expect("warnings are written");
    assert!(serde_json::from_str::<Value>(failed).is_err() && failed.contains("WARN"), "a text line: {failed}");
    assert!(!lines.iter().any(|l| l.contains("answered")), "info lines are filtered out at WARN");
    drop(lambda_settings);

    // QA_LOG_FORMAT wins over Lambda's variable; POWERTOOLS_METRICS_DISABLED turns metric
    // lines off.
    let ours = bootstrap(
        cache.path(),
        &[("QA_LOG_FORMAT", "json"), ("AWS_LAMBDA_LOG_FORMAT", "Text"), ("POWERTOOLS_METRICS_DISABLED", "true")],
        &[],
    );
    assert_eq!(envelope_body(&ours.invoke(&http_v2(&body, false)), 200)["Answer"], "1886");
    ours.flush_log();
    let lines = ours.function.lines();
    assert!(lines.iter().any(|l| l.contains("\"answered\"")), "the answered line is logged");
    assert!(!lines.iter().any(|l| l.contains("\"_aws\"")), "no metric line: {lines:#?}");
    for line in lines.iter().filter(|l| !l.starts_with('<')) {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "JSON under QA_LOG_FORMAT=json: {line}");
    }
    drop(ours);

    // QA_LOG_FORMAT=text wins over Lambda's JSON default; metric lines stay JSON.
    let text = bootstrap(cache.path(), &[("QA_LOG_FORMAT", "text")], &[]);
    assert_eq!(envelope_body(&text.invoke(&http_v2(&body, false)), 200)["Answer"], "1886");
    text.flush_log();
    let lines = text.function.lines();
    let answered = lines.iter().find(|l| l.contains("answered")).expect("the answered line");
    assert!(serde_json::from_str::<Value>(answered).is_err() && answered.contains("INFO"), "a text line: {answered}");
    assert!(!metric_lines(&lines, "Requests").is_empty(), "metric lines are JSON: {lines:#?}");
}

/// Unpacks a zip package as Lambda does (into what becomes `/var/task`, modes kept).
fn unpack(package: &std::path::Path, task_root: &std::path::Path) {
    let script = "import sys, zipfile, os\nwith zipfile.ZipFile(sys.argv[1]) as z:\n    for info in z.infolist():\n        path = z.extract(info, sys.argv[2])\n        os.chmod(path, (info.external_attr >> 16) & 0o777)\n";
    let status = Command::new("python3").arg("-c").arg(script).arg(package).arg(task_root).status().unwrap();
    assert!(status.success(), "unzipping {}", package.display());
}

/// A zip package's bootstrap in `task_root` under the emulator, configured as the zip
/// templates configure it (nothing about where its files are: the defaults find them), with
/// `runner` in front of it (an emulator for another architecture) when given.
fn zip_bootstrap(task_root: &std::path::Path, runner: Option<&[&str]>, cache: &std::path::Path) -> Lambda {
    let bootstrap = task_root.join("bootstrap");
    let mut function = match runner {
        Some([program, args @ ..]) => {
            let mut command = Command::new(program);
            command.args(args).arg(&bootstrap);
            command
        }
        _ => Command::new(&bootstrap),
    };
    function
        .env("LAMBDA_TASK_ROOT", task_root)
        .env("QA_CACHE_DIR", cache)
        .env("QA_PRELOAD", "nlp1")
        .env("QA_GUEST_INSTANCES", "4")
        .current_dir(task_root);
    Lambda::launch(function)
}

/// Checks a started zip bootstrap: the guest and the model's snapshot come from the package
/// (nothing compiled), and the sample is answered.
fn answers_from_the_package(lambda: &Lambda, timeout: Duration) {
    let ready = lambda.function.wait_for_log("guest ready", timeout);
    assert!(ready.contains("Shipped"), "the package's precompiled guest is used: {ready}");
    let prepared = lambda.function.wait_for_log("guest prepared for model", timeout);
    assert!(prepared.contains("nlp1") && prepared.contains("Shipped"), "the package's snapshot is used: {prepared}");
    let answer = envelope_body(&lambda.invoke(&http_v2(&benz_request().to_string(), false)), 200);
    assert_eq!(answer["Answer"], "1886", "{answer}");
    assert!(!lambda.logged("compiled guest"), "nothing was compiled: {:?}", lambda.function.lines());
    assert!(lambda.logged("loaded as saved"), "the package's model graph was optimized when packaged: {:?}", lambda.function.lines());
}

/// `scripts/package-lambda.sh` makes the zip Lambda runs: unpacked as Lambda unpacks it, its
/// bootstrap finds ONNX Runtime, the guest, its precompiled artifacts and the models by the
/// defaults alone, and answers. (This machine's build of the host as the bootstrap; the arm64
/// test below runs one cargo-lambda cross-compiled.)
#[test]
fn the_x86_64_zip_package_runs_as_a_bootstrap_under_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("qa-x86_64.zip");
    let output = Command::new("bash")
        .arg(workspace().join("scripts/package-lambda.sh"))
        .args(["x86_64", "--with-models", "--bootstrap", env!("CARGO_BIN_EXE_qa-host"), "--out"])
        .arg(&package)
        .output()
        .unwrap();
    assert!(output.status.success(), "package-lambda.sh failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let task_root = dir.path().join("var/task");
    unpack(&package, &task_root);
    let files: Vec<String> =
        std::fs::read_dir(&task_root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for expected in ["bootstrap", "libonnxruntime.so", "qa-guest.wasm", "models"] {
        assert!(files.iter().any(|f| f == expected), "{expected} not in {files:?}");
    }
    assert_eq!(files.iter().filter(|f| f.ends_with(".cwasm")).count(), 3, "guest, instrumented guest, nlp1's snapshot: {files:?}");
    let lambda = zip_bootstrap(&task_root, None, &dir.path().join("cache"));
    answers_from_the_package(&lambda, Duration::from_secs(60));
}

/// The arm64 package (cargo-lambda with zig, ONNX Runtime's aarch64 wheel, the guest compiled
/// with `compile-guest --target aarch64-unknown-linux-gnu`), built by `scripts/test.sh`, runs
/// under `qemu-aarch64` against the emulator and answers with the shipped arm64 artifacts.
/// Emulated, so its timings mean nothing.
#[test]
fn the_arm64_zip_package_answers_under_qemu() {
    let package = required("QA_TEST_ARM64_PACKAGE", workspace().join("target/lambda/qa-arm64-models.zip"));
    let dir = tempfile::tempdir().unwrap();
    let task_root = dir.path().join("var/task");
    unpack(&package, &task_root);
    let elf = std::fs::read(task_root.join("bootstrap")).unwrap();
    // e_machine 0xB7: AArch64.
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 0xB7, "the bootstrap is an arm64 executable");
    let runner = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"];
    let lambda = zip_bootstrap(&task_root, Some(&runner), &dir.path().join("cache"));
    answers_from_the_package(&lambda, Duration::from_secs(300));
}

/// The test build of `qa-host` with the shipped models and `guest`, `env` added, as the
/// bootstrap of the tests' own Runtime API server (`common::runtime_api`: several invocations
/// at once, SnapStart's restore call), with the compiled-guest cache of the other tests.
fn bootstrap_of(api: &RuntimeApi, guest: PathBuf, env: &[(&str, &str)]) -> Spawned {
    let mut function = Command::new(env!("CARGO_BIN_EXE_qa-host"));
    function
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", guest)
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
        .envs(env.iter().copied());
    as_bootstrap(&mut function, &api.address());
    Spawned::start(function)
}

/// The JSON lines among `lines`.
fn json_lines(lines: &[String]) -> Vec<Value> {
    lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Lambda Managed Instances: with `AWS_LAMBDA_MAX_CONCURRENCY=4` the environment polls for 4
/// invocations at once and answers them side by side. Six questions over six documents are
/// asked one at a time, then all at once: at least 3 are in flight together, each gets the
/// answer it got alone (nothing crosses between invocations), and each invocation's log and
/// metric lines carry its own request id.
#[test]
fn managed_instances_answer_several_invocations_at_once_each_as_alone() {
    let api = RuntimeApi::start();
    let host = bootstrap_of(&api, qa_guest(), &[("AWS_LAMBDA_MAX_CONCURRENCY", "4"), ("QA_PRELOAD", "nlp1")]);
    let pollers = || api.wait_for("4 pollers waiting", Duration::from_secs(180), |r| (r.polling == 4).then_some(()));
    pollers();
    let squad: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace().join("fixtures/squad-dev-v1.1-sample.json")).unwrap()).unwrap();
    let mut asked: Vec<Value> = squad["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|article| {
            let paragraph = &article["paragraphs"][0];
            json!({"question": paragraph["qas"][0]["question"], "context": paragraph["context"]})
        })
        .collect();
    asked.push(benz_request());
    let event = |request: &Value| http_v2(&request.to_string(), false);
    let answer_of = |id: &str| envelope_body(&api.answer(id, Duration::from_secs(180)).body, 200)["Answer"].as_str().unwrap().to_string();
    let alone: Vec<String> = asked.iter().map(|request| answer_of(&api.invoke(event(request), Duration::from_secs(300)))).collect();
    let distinct: std::collections::HashSet<&String> = alone.iter().collect();
    assert_eq!(distinct.len(), asked.len(), "each question has its own answer, so a mix-up would show: {alone:?}");

    pollers();
    let ids: Vec<String> = asked.iter().map(|request| api.invoke(event(request), Duration::from_secs(300))).collect();
    for (id, expected) in ids.iter().zip(&alone) {
        assert_eq!(&answer_of(id), expected, "{id}");
    }
    let most = api.record().most_in_flight;
    assert!(most >= 3, "at most {most} invocations were in flight at once");

    // One metric line and one `answered` line per invocation, each with its own id, and the
    // invocation's span on every line logged while serving it.
    let mut every: Vec<String> = api.record().answers.iter().map(|a| a.request_id.clone()).collect();
    every.sort();
    wait_until("a metric line per invocation", Duration::from_secs(10), || host.count("\"_aws\"") >= every.len());
    let lines = json_lines(&host.lines());
    let metric_ids: Vec<&str> = lines.iter().filter(|l| l.get("_aws").is_some()).map(|l| l["request_id"].as_str().unwrap()).collect();
    let answered: Vec<&Value> = lines.iter().filter(|l| l["message"] == "answered").collect();
    let mut sorted = metric_ids.clone();
    sorted.sort();
    assert_eq!(sorted, every, "one metric line per invocation, with its id");
    assert_eq!(answered.len(), every.len());
    for line in answered {
        assert_eq!(line["request_id"], line["span"]["request_id"], "{line}");
    }
    for line in lines.iter().filter(|l| l["span"]["request_id"].is_string()) {
        assert!(every.iter().any(|id| line["span"]["request_id"] == id.as_str()), "{line}");
    }
}

/// Each of several invocations in flight together keeps its own deadline: one whose guest
/// would sleep 30 s with 2.5 s left is cut and answered `guest_timeout` before its deadline,
/// while one beside it with minutes left sleeps its whole 4 s (past the first one's deadline),
/// and a third is answered at once. (The misbehaving guest: its sleeps take the same time on
/// any machine.)
#[test]
fn managed_instances_keep_each_invocation_s_own_deadline() {
    let api = RuntimeApi::start();
    let host = bootstrap_of(&api, misbehaving_guest(), &[("AWS_LAMBDA_MAX_CONCURRENCY", "3")]);
    api.wait_for("3 pollers waiting", Duration::from_secs(180), |r| (r.polling == 3).then_some(()));
    let ask = |question: &str, context: &str| http_v2(&json!({"question": question, "context": context}).to_string(), false);
    let short = api.invoke(ask("sleep:30", "cut short"), Duration::from_millis(2_500));
    let long = api.invoke(ask("sleep:4", "slept"), Duration::from_secs(120));
    let quick = api.invoke(ask("hello", "quick"), Duration::from_secs(120));
    let (short, long, quick) = (
        api.answer(&short, Duration::from_secs(60)),
        api.answer(&long, Duration::from_secs(60)),
        api.answer(&quick, Duration::from_secs(60)),
    );
    assert!(api.record().most_in_flight >= 3, "the three were in flight together");

    let cut = envelope_body(&short.body, 500);
    assert_eq!((&cut["error"]["code"], &cut["error"]["request_id"]), (&json!("guest_timeout"), &json!(short.request_id)), "{cut}");
    assert!(short.at <= short.deadline, "answered {:?} after its deadline", short.at - short.deadline);
    let slept = envelope_body(&long.body, 500);
    assert!(slept["error"]["message"].as_str().is_some_and(|m| m.contains("woke up")), "the long one slept its 4 s: {slept}");
    assert!(long.at > short.deadline, "the long one ran past the short one's deadline without being cut");
    assert!(long.at <= long.deadline);
    assert_eq!(envelope_body(&quick.body, 200)["Answer"], "quick");

    wait_until("a metric line per invocation", Duration::from_secs(10), || host.count("\"_aws\"") >= 3);
    let metrics: Vec<Value> = json_lines(&host.lines()).into_iter().filter(|l| l.get("_aws").is_some()).collect();
    let timed_out: Vec<&Value> = metrics.iter().filter(|m| m["error_code"] == "guest_timeout").collect();
    assert_eq!(timed_out.len(), 1, "{metrics:?}");
    assert_eq!(timed_out[0]["request_id"], short.request_id.as_str());
}

/// SnapStart: the bootstrap initializes (its guest from S3, the image's model preloaded by
/// default), drops its S3 clients and calls `/runtime/restore/next` before asking for any
/// invocation. The credentials it used and the connections it opened before the snapshot are
/// not reused after the restore: every S3 request after it is signed with the credentials the
/// restored environment is given, on a connection opened after it; the guest (in S3) is
/// re-checked on the first request; and the first invocation reports the restore, not the
/// publish-time init.
#[test]
fn a_snapstart_restore_gets_new_credentials_and_connections_before_its_first_invocation() {
    use common::runtime_api::CREDENTIALS_TOKEN;
    use common::s3::RecordingProxy;
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "remote/", &models_dir().join("nlp1"));
    s3.put("models", "guests/qa-guest.wasm", &std::fs::read(qa_guest()).unwrap());
    let proxy = RecordingProxy::start(s3.port);
    let api = RuntimeApi::start();
    let cache = tempfile::tempdir().unwrap();
    let (credentials, endpoint, models_cache) =
        (api.credentials_uri(), format!("http://127.0.0.1:{}", proxy.port), cache.path().display().to_string());
    let host = bootstrap_of(
        &api,
        qa_guest(),
        &[
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &credentials),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", CREDENTIALS_TOKEN),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("QA_GUEST", "s3://models/guests/qa-guest.wasm"),
            ("QA_MODELS", "remote=s3://models/remote/"),
            ("QA_MODEL_CACHE_DIR", &models_cache),
        ],
    );
    let snapshot = api.wait_for("the restore call", Duration::from_secs(240), |r| r.restore_calls.first().copied());

    // Before the snapshot: no invocation asked for, the image's model preloaded without
    // QA_PRELOAD, the guest fetched with the init's credentials, every S3 connection closed.
    let before = &api.record().credential_fetches.clone();
    assert!(api.record().next_calls.is_empty(), "no /next before the snapshot");
    assert!(!before.is_empty() && before.iter().all(|(_, key)| key == "KEY-BEFORE-SNAPSHOT"), "{before:?}");
    let preloaded = host.wait_for_log("preloaded", Duration::from_secs(10));
    assert!(preloaded.contains("nlp1"), "{preloaded}");
    wait_until("the S3 connections of the init to close", Duration::from_secs(20), || {
        proxy.connections().iter().all(|c| c.closed.is_some_and(|closed| closed <= Instant::now()))
    });
    let init = proxy.connections();
    assert!(init.iter().any(|c| !c.requests.is_empty()), "the guest came from S3");
    assert!(init.iter().flat_map(|c| &c.requests).all(|(_, _, key)| key == "KEY-BEFORE-SNAPSHOT"), "{init:?}");
    // Dropping the clients drops their connection pools; the sockets are then closed by their
    // own tasks, which on a loaded machine can run just after the restore call. What matters
    // after a restore, that none of them is reused, is checked below; here, that the drop closed
    // them promptly.
    assert!(
        init.iter().all(|c| c.closed.is_some_and(|closed| closed <= snapshot + Duration::from_secs(5))),
        "closed by the dropped clients: {init:?}"
    );

    // The restore: the environment's credentials are new now.
    api.set_access_key("KEY-AFTER-RESTORE");
    let restored = Instant::now();
    api.release_restore();
    let local = api.invoke(http_v2(&benz_request().to_string(), false), Duration::from_secs(120));
    assert_eq!(envelope_body(&api.answer(&local, Duration::from_secs(120)).body, 200)["Answer"], "1886");
    let mut request = benz_request();
    request["model_type"] = json!("remote");
    let remote = api.invoke(http_v2(&request.to_string(), false), Duration::from_secs(120));
    assert_eq!(envelope_body(&api.answer(&remote, Duration::from_secs(120)).body, 200)["Answer"], "1886");
    let after = |connections: &[common::s3::Connection]| -> Vec<(Instant, String, String)> {
        connections.iter().flat_map(|c| c.requests.iter().filter(|(at, ..)| *at > restored).cloned()).collect()
    };
    wait_until("the guest's re-check in S3", Duration::from_secs(30), || {
        after(&proxy.connections()).iter().any(|(_, line, _)| line.contains("prefix=guests"))
    });

    let connections = proxy.connections();
    let requests = after(&connections);
    assert!(requests.iter().any(|(_, line, _)| line.contains("prefix=remote")), "the remote model was fetched: {requests:?}");
    for (_, line, key) in &requests {
        assert_eq!(key, "KEY-AFTER-RESTORE", "{line}: signed with credentials from before the snapshot");
    }
    for connection in connections.iter().filter(|c| c.requests.iter().any(|(at, ..)| *at > restored)) {
        assert!(connection.opened > restored, "a connection from before the snapshot was reused: {connection:?}");
    }
    let record = api.record();
    assert!(
        record.credential_fetches.iter().any(|(at, key)| *at > restored && key == "KEY-AFTER-RESTORE"),
        "{:?}",
        record.credential_fetches
    );
    assert!(record.next_calls.iter().all(|at| *at > snapshot), "every /next came after the restore call");
    assert!(record.restore_errors.is_empty() && record.init_errors.is_empty(), "{:?} {:?}", record.restore_errors, record.init_errors);
    drop(record);

    wait_until("the metric lines", Duration::from_secs(10), || host.count("\"_aws\"") >= 2);
    let first = json_lines(&host.lines()).into_iter().find(|l| l.get("_aws").is_some()).unwrap();
    qa_host::telemetry::emf::validate(&first).unwrap();
    assert_eq!(first["init_type"], "snap-start", "{first}");
    assert!(first["RestoreTime"].as_f64().is_some() && first.get("InitTime").is_none(), "{first}");
}
