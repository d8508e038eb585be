//! The guest on its own under the wasmtime command-line tool (the workspace's
//! `tools/wasmtime-onnx`, at `target/debug/wasmtime`, with ONNX support), with a JSON fixture on standard input, exactly as a guest author
//! runs it locally. The model is the shipped one with float32 inputs
//! (`tools/train-qa/f32_inputs.py`), because the CLI's ONNX backend accepts only f32 tensors.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `guest` under `wasmtime run` with the f32 model mounted and `fixture` on stdin.
fn run(guest: &std::path::Path, fixture: &[u8]) -> std::process::Output {
    let wasmtime = required("WASMTIME_CLI", workspace().join("target/debug/wasmtime"));
    let models = required("QA_TEST_F32_MODELS", workspace().join(".cache/wasmtime-models/nlp1/model.onnx"));
    let models = models.parent().and_then(|p| p.parent()).unwrap().to_path_buf();
    {
        let mut child = Command::new(&wasmtime)
            .arg("run")
            .args(["-S", "nn", "-S"])
            .arg(format!("nn-graph=onnx::{}", models.join("nlp1").display()))
            .arg("--dir")
            .arg(format!("{}::/models", models.display()))
            .arg(guest)
            .env("ORT_DYLIB_PATH", onnxruntime())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wasmtime");
        child.stdin.take().unwrap().write_all(fixture).unwrap();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn the_guest_answers_the_sample_fixture_under_wasmtime_run() {
    let run = |fixture: &[u8]| run(&qa_guest(), fixture);

    let output = run(&std::fs::read(workspace().join("fixtures/benz.json")).unwrap());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("answers as JSON");
    assert_eq!(printed["answer"], "1886");
    assert_eq!(printed["matches_expected"], true);

    // Without model_type the guest uses the graph the runtime preloaded.
    let fixture = serde_json::json!({"question": "When was the car invented?", "context": benz_request()["context"], "expected": "1886"});
    let output = run(fixture.to_string().as_bytes());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((&printed["model_type"], &printed["answer"]), (&serde_json::json!("nlp1"), &serde_json::json!("1886")));
    assert_eq!(printed["answers"].as_array().map(Vec::len), Some(1), "top_k defaults to 1");

    // The fixture's top_k.
    let fixture = serde_json::json!({"question": "When was the car invented?", "context": benz_request()["context"], "top_k": 3});
    let output = run(fixture.to_string().as_bytes());
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["answers"].as_array().map(Vec::len), Some(3), "{printed}");

    // A wrong expectation is reported through the exit code.
    let fixture = serde_json::json!({"question": "When was the car invented?", "context": benz_request()["context"], "expected": "1908"});
    let output = run(fixture.to_string().as_bytes());
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stdout));
}

/// A fixture with `questions`, under both the current guest and the one built against the
/// older contract: the same results, one per question, in order.
#[test]
fn both_guests_answer_a_questions_fixture_under_wasmtime_run() {
    let fixture = serde_json::json!({
        "questions": sample_questions(),
        "context": benz_request()["context"],
        "expected": ["1886", null, null, null, null, null],
    });
    let mut printed = Vec::new();
    for guest in [qa_guest(), legacy_guest()] {
        let output = run(&guest, fixture.to_string().as_bytes());
        assert!(output.status.success(), "{}: {}", guest.display(), String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("answers as JSON");
        let results = report["results"].as_array().unwrap_or_else(|| panic!("no results: {report}"));
        assert_eq!(results.len(), sample_questions().len());
        assert_eq!(results[0]["matches_expected"], true, "{report}");
        for (result, error) in results.iter().zip(SAMPLE_QUESTION_ERRORS) {
            // The guest alone checks only what the guest checks: an empty question and one over
            // 64 tokens; the host's byte limit is the host's.
            let fails_in_the_guest = matches!(error, Some("empty_question" | "invalid_input"));
            assert_eq!(result.get("error").is_some(), fails_in_the_guest, "{result}");
        }
        printed.push(report["results"].clone());
    }
    assert_eq!(printed[0], printed[1], "both guests give the same results");
}

/// The converted model (float32 ids in, for the CLI's backend) under `qa-host serve` answers
/// the sample as the shipped int64 model does: same span, same score.
#[test]
fn the_converted_model_answers_the_same_way_under_qa_host() {
    let converted = required("QA_TEST_F32_MODELS", workspace().join(".cache/wasmtime-models/nlp1/model.onnx"));
    let converted_dir = converted.parent().and_then(|p| p.parent()).unwrap().display().to_string();
    let shipped = Serving::start(&qa_guest(), &[] as &[(&str, &str)]).post(benz_request().to_string());
    let f32 = Serving::start(&qa_guest(), &[("QA_MODELS_DIR", converted_dir)]).post(benz_request().to_string());
    assert_eq!((shipped.0, f32.0), (200, 200), "{shipped:?} {f32:?}");
    let span = |body: &serde_json::Value| (body["Answer"].clone(), body["start"].clone(), body["end"].clone());
    assert_eq!(span(&f32.1), span(&shipped.1));
    let (a, b) = (f32.1["score"].as_f64().unwrap(), shipped.1["score"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-4, "scores {a} and {b}");
}
