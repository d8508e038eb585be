//! Faults must stay inside one request: a guest that traps, spins, or hoards memory, and
//! models whose files are broken, each fail with a clear error, and the next request is
//! served. The guest is the real component built from `guest/fixtures`; the models are the
//! real model with one file broken.

mod common;

use common::*;
use qa_host::api::QaRequest;
use std::time::{Duration, Instant};

/// How late past its deadline a call may end on a loaded 2-core machine (timers and threads
/// wait for a core); a host that missed the deadline would miss it by far more.
const LATE: Duration = Duration::from_secs(2);

async fn misbehaving_service(deadline: Duration, memory_mb: usize) -> std::sync::Arc<qa_host::service::QaService> {
    let mut config = config(misbehaving_guest(), models_dir());
    config.guest_deadline = deadline;
    config.guest_memory_bytes = memory_mb << 20;
    service(&config).await
}

/// Asks the misbehaving guest; a well-behaved answer is the whole context, "ok".
async fn ask(service: &std::sync::Arc<qa_host::service::QaService>, question: &str) -> Result<String, (u16, &'static str, String)> {
    service.answer(QaRequest::new(question, "ok")).await.map(|r| r.body.answer).map_err(|e| (e.status(), e.code(), e.to_string()))
}

/// What a probing question found out from inside the sandbox (reported as an error, since
/// findings are not spans of the context).
async fn probe(service: &std::sync::Arc<qa_host::service::QaService>, question: &str) -> String {
    let (_, _, message) = ask(service, question).await.expect_err("probes report through an error");
    let (_, finding) = message.split_once("probe: ").unwrap_or_else(|| panic!("not a probe report: {message}"));
    finding.to_string()
}

#[tokio::test]
async fn a_trapping_guest_fails_one_request_and_the_next_is_served() {
    let service = misbehaving_service(Duration::from_secs(10), 256).await;
    let (status, code, message) = ask(&service, "trap").await.unwrap_err();
    assert_eq!((status, code), (500, "guest_failed"));
    assert!(message.contains("trap requested"), "the guest's panic message is reported: {message}");
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok");
}

#[tokio::test]
async fn a_looping_guest_is_stopped_at_its_deadline() {
    let deadline = Duration::from_millis(300);
    let service = misbehaving_service(deadline, 256).await;
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok", "the model is loaded before the deadline is timed");
    let started = Instant::now();
    let (status, code, message) = ask(&service, "spin").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!((status, code), (500, "guest_timeout"));
    assert!(message.contains("300ms"), "the error names the deadline: {message}");
    assert!(took >= deadline && took < deadline + LATE, "a guest spinning forever under a 300 ms deadline was stopped after {took:?}");
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok");
}

#[tokio::test]
async fn a_request_with_less_time_left_than_the_guest_limit_ends_within_that_time() {
    // What the Lambda edge does with the invocation's remaining time (less its margin): the
    // guest's own limit is a minute, the request's budget 800 ms.
    let budget = Duration::from_millis(800);
    let service = misbehaving_service(Duration::from_secs(60), 256).await;
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok", "the model is loaded before the budget starts");
    let started = Instant::now();
    let error = service.answer_within(QaRequest::new("spin", "ok"), Some(budget), "test").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(error.code(), "guest_timeout", "{error}");
    // Under the guest's own limit the spin would go on for a minute.
    assert!(took < budget + LATE, "a request with {budget:?} left ended after {took:?}");
    let message = error.to_string();
    let budget_ms: f64 = message
        .rsplit("deadline of ")
        .next()
        .and_then(|d| d.strip_suffix("ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no deadline in milliseconds in {message:?}"));
    assert!(budget_ms <= 800.0 && budget_ms > 100.0, "the budget, less the time taken to find the model: {message}");
    assert!(took.as_secs_f64() * 1000.0 >= budget_ms, "the call ran until its deadline of {budget_ms} ms, not {took:?}");
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok");
}

#[tokio::test]
async fn a_hoarding_guest_hits_its_memory_cap() {
    let service = misbehaving_service(Duration::from_secs(30), 64).await;
    let (status, code, message) = ask(&service, "hog").await.unwrap_err();
    assert_eq!((status, code), (500, "guest_failed"));
    assert!(message.contains("memory limit of 64 MiB"), "{message}");
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok");
}

#[tokio::test]
async fn the_guest_sees_no_environment_and_no_files_outside_models() {
    // SAFETY: set before any thread of this test reads the environment; other tests in this
    // process do not read this variable.
    unsafe { std::env::set_var("AWS_SECRET_ACCESS_KEY", "host-secret-for-sandbox-test") };
    // A model directory holding symlinks that point out of it, as a careless upload might.
    let dir = tempfile::tempdir().unwrap();
    link_model(&models_dir().join("nlp1"), &dir.path().join("nlp1"));
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("nlp1/passwd")).unwrap();
    std::os::unix::fs::symlink("../../..", dir.path().join("nlp1/up")).unwrap();
    let mut config = config(misbehaving_guest(), dir.path().to_path_buf());
    config.default_model = Some("nlp1".into());
    let service = service(&config).await;
    assert_eq!(probe(&service, "env").await, "", "the guest's environment is empty");
    for path in [
        "/etc/passwd",
        "/models/../../etc/passwd",
        "../etc/passwd",
        "/proc/self/environ",
        "/models/nlp1/passwd",
        "/models/nlp1/up/etc/passwd",
        "/models/nlp1/../../../etc/hostname",
    ] {
        let finding = probe(&service, &format!("read:{path}")).await;
        assert!(finding.starts_with("read refused"), "{path}: {finding}");
    }
    // Inside the mount, reading works.
    let config = probe(&service, "read:/models/nlp1/config.json").await;
    assert!(config.starts_with('{'), "{config}");
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok");
}

#[tokio::test]
async fn the_guest_cannot_open_a_network_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = misbehaving_service(Duration::from_secs(10), 256).await;
    let finding = probe(&service, &format!("socket:{port}")).await;
    assert!(finding.starts_with("socket refused") && finding.contains("access-denied"), "{finding}");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the listener saw a connection from the guest: {other:?}"),
    }
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok");
}

#[tokio::test]
async fn answers_that_are_not_spans_of_the_context_are_dropped() {
    let service = misbehaving_service(Duration::from_secs(30), 256).await;
    for question in ["huge:64", "many"] {
        let (status, code, message) = ask(&service, question).await.unwrap_err();
        assert_eq!((status, code), (500, "guest_failed"), "{question}: {message}");
        assert!(message.contains("broke the answer contract"), "{question}: {message}");
        assert!(message.len() < 500, "the enormous answer is not echoed: {} bytes", message.len());
    }
    assert_eq!(ask(&service, "hello").await.unwrap(), "ok");
}

#[tokio::test]
async fn the_guest_can_load_only_the_model_the_request_named() {
    let dir = tempfile::tempdir().unwrap();
    link_model(&models_dir().join("nlp1"), &dir.path().join("nlp1"));
    link_model(&models_dir().join("nlp1"), &dir.path().join("other"));
    let mut config = config(misbehaving_guest(), dir.path().to_path_buf());
    config.default_model = Some("nlp1".into());
    let service = service(&config).await;
    let finding = probe(&service, "load:other").await;
    assert!(finding.starts_with("load refused"), "{finding}");
    assert_eq!(probe(&service, "load:nlp1").await, "loaded");
}

#[tokio::test]
async fn broken_model_files_are_clear_errors_and_the_good_model_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    link_model(&models_dir().join("nlp1"), &root.join("good"));
    link_model(&models_dir().join("nlp1"), &root.join("badtokenizer"));
    std::fs::remove_file(root.join("badtokenizer/tokenizer.json")).unwrap();
    std::fs::write(root.join("badtokenizer/tokenizer.json"), b"{ this is not a tokenizer").unwrap();
    link_model(&models_dir().join("nlp1"), &root.join("notonnx"));
    std::fs::remove_file(root.join("notonnx/model.onnx")).unwrap();
    std::fs::write(root.join("notonnx/model.onnx"), b"definitely not protobuf").unwrap();
    // Parses as a (graphless) ModelProto, so ONNX Runtime itself refuses it, naming the path.
    link_model(&models_dir().join("nlp1"), &root.join("nograph"));
    std::fs::remove_file(root.join("nograph/model.onnx")).unwrap();
    std::fs::write(root.join("nograph/model.onnx"), [0x08, 0x07]).unwrap();
    link_model(&models_dir().join("nlp1"), &root.join("mismatch"));
    // The config claims no token types, so the guest omits an input the graph requires.
    std::fs::remove_file(root.join("mismatch/config.json")).unwrap();
    std::fs::write(root.join("mismatch/config.json"), br#"{"type_vocab_size": 1, "max_position_embeddings": 512}"#).unwrap();

    let mut config = config(qa_guest(), root.to_path_buf());
    config.default_model = Some("good".into());
    let service = service(&config).await;
    let sample: QaRequest = serde_json::from_value(benz_request()).unwrap();
    let ask_model = |name: &str| QaRequest { model_type: Some(name.into()), ..sample.clone() };

    let cases = [
        ("badtokenizer", "model_invalid", "tokenizer.json does not parse"),
        ("notonnx", "model_invalid", "model.onnx is not a valid protobuf message"),
        ("nograph", "model_invalid", "ONNX Runtime refused model.onnx"),
        ("mismatch", "inference_failed", "token_type_ids"),
    ];
    for (name, code, needle) in cases {
        for attempt in 0..2 {
            let error = service.answer(ask_model(name)).await.unwrap_err();
            assert_eq!((error.status(), error.code()), (500, code), "{name} attempt {attempt}: {error}");
            assert!(error.to_string().contains(needle), "{name}: {error}");
            assert!(!error.to_string().contains(&*root.to_string_lossy()), "{name}: a host path reached the client: {error}");
        }
        let ok = service.answer(ask_model("good")).await.expect("the good model still answers");
        assert_eq!(ok.answer, "1886");
    }
}
