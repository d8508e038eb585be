//! The guest on its own: a JSON fixture on standard input, the answers as JSON on standard
//! output, for `wasmtime run`. Plain functions over a fixture and the answers, so the format is
//! tested natively; the component supplies the model's answers.
//!
//! Fixture: `{"question" | "questions", "context", "model_type"?, "top_k"?, "decoding"?,
//! "expected"?}` (`decoding`: `"document"`, the default, or `"pipeline"`).
//! `questions` (an array) asks several questions over the context in one call and prints
//! `results`, one per question; `expected` is then an array too (one expected answer per
//! question, `null` for none). Without `model_type`, the caller picks the model.

use crate::{Decoding, Options, QaError, Timings};
use serde_json::{Value, json};

/// A parsed fixture.
#[derive(Clone, Debug, PartialEq)]
pub struct Fixture {
    pub questions: Vec<String>,
    /// Whether the fixture gave `questions` (the output then has `results`).
    pub many: bool,
    pub context: String,
    pub model_type: Option<String>,
    pub options: Options,
    /// One expected best answer per question, where given.
    pub expected: Vec<Option<String>>,
}

/// One question's outcome.
pub type Outcome = Result<crate::Answered, QaError>;

pub fn parse(input: &str) -> Result<Fixture, String> {
    let fixture: Value = serde_json::from_str(input).map_err(|e| format!("fixture is not JSON: {e}"))?;
    let strings = |value: &Value, what: &str| -> Result<Vec<String>, String> {
        let list = value.as_array().ok_or(format!("fixture's {what} must be an array"))?;
        list.iter().map(|v| v.as_str().map(str::to_string).ok_or(format!("fixture's {what} must hold strings"))).collect()
    };
    let (questions, many) = match (fixture.get("question"), fixture.get("questions")) {
        (Some(q), None) => (vec![q.as_str().ok_or("fixture's \"question\" must be a string")?.to_string()], false),
        (None, Some(qs)) => (strings(qs, "\"questions\"")?, true),
        _ => return Err("fixture needs a \"question\" string or a \"questions\" array (not both)".into()),
    };
    if questions.is_empty() {
        return Err("fixture's \"questions\" is empty".into());
    }
    let context = fixture.get("context").and_then(Value::as_str).ok_or("fixture needs a \"context\" string")?.to_string();
    let mut options = Options::default();
    if let Some(k) = fixture.get("top_k") {
        let k = k.as_u64().filter(|k| *k >= 1).ok_or("fixture's \"top_k\" must be a whole number of at least 1")?;
        options.top_k = usize::try_from(k).map_err(|_| "fixture's \"top_k\" is out of range")?;
    }
    options.decoding = match fixture.get("decoding") {
        None => options.decoding,
        Some(Value::String(name)) => Decoding::from_name(name).map_err(|e| format!("fixture's {e}"))?,
        Some(other) => return Err(format!("fixture's \"decoding\" must be \"document\" or \"pipeline\", not {other}")),
    };
    let expected = match fixture.get("expected") {
        None | Some(Value::Null) => vec![None; questions.len()],
        Some(Value::String(one)) if !many => vec![Some(one.clone())],
        Some(Value::Array(list)) if many && list.len() == questions.len() => list.iter().map(|v| v.as_str().map(str::to_string)).collect(),
        Some(_) => {
            return Err("fixture's \"expected\" must be a string (or, with \"questions\", an array of one entry per question)".into());
        }
    };
    let model_type = fixture.get("model_type").and_then(Value::as_str).map(str::to_string);
    Ok(Fixture { questions, many, context, model_type, options, expected })
}

/// What to print, and whether every expectation held.
pub fn report(fixture: &Fixture, model: &str, outcomes: &[Outcome]) -> (Value, bool) {
    let mut all_matched = true;
    let mut totals = Timings::default();
    let entries: Vec<Value> = fixture
        .questions
        .iter()
        .zip(outcomes)
        .zip(&fixture.expected)
        .map(|((question, outcome), expected)| match outcome {
            Ok((answers, timings)) => {
                totals.tokenize_us += timings.tokenize_us;
                totals.inference_us += timings.inference_us;
                totals.decode_us += timings.decode_us;
                totals.windows += timings.windows;
                let best = answers.first().map(|a| a.text.as_str());
                let matched = expected.as_deref().is_none_or(|e| Some(e) == best);
                all_matched &= matched;
                json!({
                    "question": question,
                    "answer": best,
                    "answers": answers.iter().map(|a| json!({"text": a.text, "score": a.score, "start": a.start, "end": a.end})).collect::<Vec<_>>(),
                    "expected": expected,
                    "matches_expected": expected.as_ref().map(|_| matched),
                })
            }
            Err(error) => {
                all_matched &= expected.is_none();
                json!({"question": question, "error": error.to_string()})
            }
        })
        .collect();
    let timings = json!({"tokenize": totals.tokenize_us, "inference": totals.inference_us, "decode": totals.decode_us});
    let output = if fixture.many {
        json!({"model_type": model, "results": entries, "timings_us": timings, "windows": totals.windows})
    } else {
        // One question: the answer's fields at the top level, as before `questions` existed.
        let mut one = match entries.into_iter().next() {
            Some(Value::Object(one)) => one,
            _ => serde_json::Map::new(),
        };
        one.remove("question");
        one.insert("model_type".into(), json!(model));
        one.insert("timings_us".into(), timings);
        one.insert("windows".into(), json!(totals.windows));
        Value::Object(one)
    };
    (output, all_matched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Answer;

    fn answered(text: &str) -> Outcome {
        Ok((
            vec![Answer { text: text.into(), score: 0.5, start: 0, end: text.chars().count() }],
            Timings { windows: 1, ..Timings::default() },
        ))
    }

    #[test]
    fn one_question_prints_the_answer_at_the_top_level() {
        let fixture = parse(r#"{"question": "When?", "context": "In 1886.", "expected": "1886"}"#).unwrap();
        assert!(!fixture.many);
        let (output, matched) = report(&fixture, "nlp1", &[answered("1886")]);
        assert!(matched);
        assert_eq!((&output["answer"], &output["model_type"], &output["windows"]), (&json!("1886"), &json!("nlp1"), &json!(1)));
        assert!(output.get("results").is_none() && output.get("question").is_none(), "{output}");
        let (_, matched) = report(&fixture, "nlp1", &[answered("1908")]);
        assert!(!matched);
    }

    #[test]
    fn questions_print_one_result_each_in_order() {
        let fixture =
            parse(r#"{"questions": ["When?", "Who?", "Where?"], "context": "c", "expected": ["1886", null, "Mannheim"]}"#).unwrap();
        assert!(fixture.many);
        let outcomes = [answered("1886"), Err(QaError::InvalidInput("question is empty".into())), answered("Mannheim")];
        let (output, matched) = report(&fixture, "nlp1", &outcomes);
        assert!(matched, "{output}");
        let results = output["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!((&results[0]["question"], &results[0]["answer"]), (&json!("When?"), &json!("1886")));
        assert!(results[1]["error"].as_str().unwrap().contains("question is empty"));
        assert_eq!(output["windows"], 2);
        let (_, matched) = report(&fixture, "nlp1", &[answered("1886"), answered("x"), answered("Berlin")]);
        assert!(!matched, "a wrong answer fails the run");
    }

    #[test]
    fn decoding_defaults_to_the_document_and_may_be_the_pipeline() {
        let decoding = |input: &str| parse(input).unwrap().options.decoding;
        assert_eq!(decoding(r#"{"question": "q", "context": "c"}"#), Decoding::Document);
        assert_eq!(decoding(r#"{"question": "q", "context": "c", "decoding": "pipeline"}"#), Decoding::Pipeline);
    }

    #[test]
    fn top_k_defaults_to_one_and_may_be_set() {
        let top_k = |input: &str| parse(input).unwrap().options.top_k;
        assert_eq!(top_k(r#"{"question": "q", "context": "c"}"#), 1);
        assert_eq!(top_k(r#"{"question": "q", "context": "c", "top_k": 3}"#), 3);
    }

    #[test]
    fn malformed_fixtures_are_named() {
        for (input, needle) in [
            (r#"{"context": "c"}"#, "needs a \"question\""),
            (r#"{"question": "q", "questions": ["q"], "context": "c"}"#, "not both"),
            (r#"{"questions": [], "context": "c"}"#, "is empty"),
            (r#"{"questions": ["q", 1], "context": "c"}"#, "must hold strings"),
            (r#"{"questions": ["q", "r"], "context": "c", "expected": "x"}"#, "one entry per question"),
            (r#"{"question": "q"}"#, "needs a \"context\""),
            (r#"{"question": "q", "context": "c", "decoding": "global"}"#, "must be \"document\" or \"pipeline\""),
            (r#"{"question": "q", "context": "c", "top_k": "3"}"#, "\"top_k\" must be a whole number"),
            (r#"{"question": "q", "context": "c", "top_k": 0}"#, "\"top_k\" must be a whole number"),
        ] {
            let error = parse(input).unwrap_err();
            assert!(error.contains(needle), "{input}: {error}");
        }
    }
}
