//! Bring your own model: one tiny random-weight QA model per family people serve from the Hub
//! (`fixtures/families/`, made by `tools/families/make.py` with transformers, tokenizers and
//! Optimum's exporter), served through the real host and guest. With the pipeline's decoding
//! every answer must be the transformers question-answering pipeline's on the same model.onnx
//! (text, character span and score, top 3), over contexts of one window and of several; with
//! the default decoding, the answers committed when the fixtures were made.

mod common;

use common::*;
use qa_host::api::{Answer, QaRequest};
use qa_host::guest::Decoding;
use serde_json::Value;

/// Every family the matrix proves (the README lists them): each must have its fixture.
const FAMILIES: [&str; 7] = ["bert-uncased", "bert-cased", "distilbert", "roberta", "xlm-roberta", "albert", "deberta-v3"];

fn fixtures() -> std::path::PathBuf {
    workspace().join("fixtures/families")
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("JSON")
}

/// The answers of `expected` (a list of `{text, start, end, score}`), for comparison.
fn expected_answers(expected: &Value) -> Vec<Answer> {
    serde_json::from_value(expected.clone()).expect("a list of answers")
}

#[tokio::test]
async fn every_family_answers_exactly_as_the_transformers_pipeline_does() {
    // Each family is a model directory; the host discovers them all.
    let service = service(&config(qa_guest(), fixtures())).await;
    let questions = read_json(&fixtures().join("questions.json"));
    let questions = questions.as_array().expect("a list of questions");
    assert!(questions.iter().any(|q| q["id"].as_str().unwrap().starts_with("single")));
    assert!(questions.iter().any(|q| q["id"].as_str().unwrap().starts_with("document")));
    let mut compared = 0;
    for family in FAMILIES {
        let expected = read_json(&fixtures().join(family).join("expected.json"));
        for question in questions {
            let id = question["id"].as_str().unwrap();
            for (decoding, reference) in [(Decoding::Pipeline, "pipeline"), (Decoding::Document, "document")] {
                let request = QaRequest {
                    model_type: Some(family.into()),
                    top_k: Some(3),
                    decoding: Some(decoding),
                    ..QaRequest::new(question["question"].as_str().unwrap(), question["context"].as_str().unwrap())
                };
                let response = service.answer(request).await.unwrap_or_else(|e| panic!("{family} {id}: {e}"));
                let want = expected_answers(&expected[reference][id]);
                let case = format!("{family}, {id}, {reference} decoding ({} windows)", response.windows);
                assert_eq!(response.answers.len(), want.len(), "{case}");
                if id.starts_with("document") {
                    assert!(response.windows > 1, "{case}: a document of several windows");
                }
                for (got, want) in response.answers.iter().zip(&want) {
                    assert_eq!((&got.text, got.start, got.end), (&want.text, want.start, want.end), "{case}");
                    // Scores are float32 arithmetic, whose last bits differ between CPUs'
                    // instruction sets (and between ONNX Runtime's and PyTorch's kernels).
                    let tolerance = 1e-4 * want.score.max(1e-3);
                    assert!((got.score - want.score).abs() <= tolerance, "{case}: score {} against {}", got.score, want.score);
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, FAMILIES.len() * questions.len() * 2);
}

/// The fixtures are the files the references were made on.
#[test]
fn each_family_s_reference_names_its_model_file() {
    use sha2::Digest;
    for family in FAMILIES {
        let expected = read_json(&fixtures().join(family).join("expected.json"));
        let model = std::fs::read(fixtures().join(family).join("model.onnx")).expect("model.onnx");
        assert_eq!(
            expected["model_sha256"].as_str(),
            Some(hex::encode(sha2::Sha256::digest(&model)).as_str()),
            "{family}: model.onnx changed; regenerate with tools/families/make.py"
        );
    }
}
