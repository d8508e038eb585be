//! Several questions over one document in one request (`questions`): answered alike by the
//! current guest (one `ask-many` call) and by a guest built against `qa:extractive@0.1.0`
//! (asked question by question), each answer equal to the one-question answer, a bad question
//! failing only its entry; through the library, `serve` and `qa-host ask`.

mod common;

use common::*;
use qa_host::api::{Answers, QaBatchResponse, QaRequest, QaResult};
use std::sync::Arc;

async fn many(service: &Arc<qa_host::service::QaService>) -> QaBatchResponse {
    let request = QaRequest::many(sample_questions(), benz_request()["context"].as_str().unwrap());
    let reply = service.reply_within(request, None, "test").await.expect("answered");
    let Answers::Many(body) = reply.body.clone() else { panic!("not a many-question response: {reply:?}") };
    reply.map(|_| body)
}

fn check_entries(results: &[QaResult], guest: &str) {
    assert_eq!(results.len(), sample_questions().len(), "{guest}: one entry per question");
    for ((result, question), error) in results.iter().zip(sample_questions()).zip(SAMPLE_QUESTION_ERRORS) {
        assert_eq!(result.question, question, "{guest}: entries keep the order");
        match error {
            Some(code) => assert_eq!(result.error.as_ref().map(|e| e.code.as_str()), Some(code), "{guest}: {result:?}"),
            None => assert!(result.error.is_none() && result.answer.is_some(), "{guest}: {result:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_guests_answer_many_questions_as_they_answer_each_alone() {
    let current = service(&config(qa_guest(), models_dir())).await;
    let legacy = service(&config(legacy_guest(), models_dir())).await;
    let (from_current, from_legacy) = (many(&current).await, many(&legacy).await);
    check_entries(&from_current.results, "current");
    check_entries(&from_legacy.results, "0.1.0");
    assert_eq!(from_current.results[0].answer.as_deref(), Some("1886"));
    assert_eq!(from_current.windows, from_legacy.windows, "the same windows ran");
    assert_eq!(from_current.windows, 3, "one window for each answered question");

    for (index, question) in sample_questions().iter().enumerate().filter(|(i, _)| SAMPLE_QUESTION_ERRORS[*i].is_none()) {
        let alone = current.answer(QaRequest::new(question.clone(), benz_request()["context"].as_str().unwrap())).await.unwrap();
        for (guest, entry) in [("current", &from_current.results[index]), ("0.1.0", &from_legacy.results[index])] {
            assert_eq!(entry.answer.as_deref(), Some(alone.answer.as_str()), "{guest}: {question}");
            assert_eq!((entry.start, entry.end), (Some(alone.start), Some(alone.end)), "{guest}: {question}");
            let score = entry.score.unwrap();
            assert!((score - alone.score).abs() < 1e-5, "{guest}: {question}: score {score} alone {}", alone.score);
        }
    }
    // The single-question request is unchanged by all this.
    let one = current.answer(serde_json::from_value(benz_request()).unwrap()).await.unwrap();
    assert_eq!(one.answer, "1886");
}

#[test]
fn questions_through_serve_and_the_ask_command() {
    let server = Serving::start(&qa_guest(), &[("QA_PRELOAD", "nlp1")]);
    let context = benz_request()["context"].clone();
    let (status, body) = server.post(serde_json::json!({"questions": sample_questions(), "context": context}).to_string());
    assert_eq!(status, 200, "{body}");
    let response: QaBatchResponse = serde_json::from_value(body.clone()).expect("a many-question response");
    check_entries(&response.results, "serve");
    assert_eq!(response.model_type, "nlp1");
    for key in ["windows", "model_version", "timings_ms"] {
        assert!(body.get(key).is_some(), "{key} in {body}");
    }
    assert!(body.get("Answer").is_none(), "no single-answer fields beside results: {body}");
    // Whole-request problems are still whole-request errors.
    for (request, code) in [
        (serde_json::json!({"questions": [], "context": context}), "invalid_field"),
        (serde_json::json!({"questions": vec!["q"; 33], "context": context}), "invalid_field"),
        (serde_json::json!({"question": "q", "questions": ["q"], "context": context}), "invalid_field"),
        (serde_json::json!({"questions": ["q"], "context": " "}), "empty_context"),
    ] {
        let (status, body) = server.post(request.to_string());
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{request}: {body}");
    }

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_qa-host"))
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", qa_guest())
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
        .args(["ask", "--question", "When was the car invented?", "--question", "Which company manufactured the Model T?", "--context"])
        .arg(context.as_str().unwrap())
        .output()
        .expect("run qa-host ask");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(printed["results"][0]["Answer"], "1886", "{printed}");
    assert_eq!(printed["results"].as_array().map(Vec::len), Some(2));
}

/// A 0.1 guest has no `prepare`: it is never snapshotted, even preloaded, and reads its
/// model's files in every request's fresh instance (a file removed after the first answer
/// fails the next request), while the current guest, preloaded, is snapshotted before the
/// first request (even with nothing shipped or cached) and answers from its snapshot.
#[test]
fn a_legacy_guest_runs_unprepared_and_reads_its_model_files_in_every_request() {
    let models = tempfile::tempdir().unwrap();
    let ask = |server: &Serving| server.post(benz_request().to_string());
    for (guest, prepares) in [(legacy_guest(), false), (qa_guest(), true)] {
        link_model(&models_dir().join("nlp1"), &models.path().join("nlp1"));
        let server = Serving::start(&guest, &[("QA_PRELOAD", "nlp1".to_string()), ("QA_MODELS_DIR", models.path().display().to_string())]);
        // Lines come through one pipe in order: all of start-up's are in once "listening" is.
        assert_eq!(server.process.logged("guest prepared for model"), prepares, "before the first request: {}", guest.display());
        let (status, body) = ask(&server);
        assert_eq!((status, &body["Answer"]), (200, &serde_json::json!("1886")), "{body}");
        std::fs::remove_file(models.path().join("nlp1/tokenizer.json")).unwrap();
        let (status, body) = ask(&server);
        if prepares {
            assert_eq!(status, 200, "the snapshot holds the parsed tokenizer: {body}");
        } else {
            assert_eq!((status, &body["error"]["code"]), (500, &serde_json::json!("model_invalid")), "{body}");
            assert!(body["error"]["message"].as_str().unwrap_or_default().contains("tokenizer.json"), "{body}");
        }
        std::fs::remove_dir_all(models.path().join("nlp1")).unwrap();
    }
}
