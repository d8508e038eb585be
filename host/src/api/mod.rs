//! The request and response every edge speaks: the original AWS sample's
//! `{"model_type","question","context"}` in and `Model_Type`/`Question`/`Answer` out, plus
//! scores, character offsets, top-k answers and per-phase timings. The limits live here too,
//! so every edge enforces the same ones.

mod error;

pub use error::ApiError;

use serde::{Deserialize, Serialize};

/// Limits on a request (documented in the README).
pub mod limits {
    /// Whole request body.
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    /// Question, in UTF-8 bytes (the guest also caps it at 64 tokens by default).
    pub const MAX_QUESTION_BYTES: usize = 2_000;
    /// Context, in UTF-8 bytes: about 50,000 tokens, a few hundred windows.
    pub const MAX_CONTEXT_BYTES: usize = 200_000;
    pub const MAX_TOP_K: u32 = 20;
    pub const MAX_ANSWER_LEN: u32 = 100;
    pub const MAX_SEQ_LEN: u32 = 512;
}

/// A question as it arrives, after the transport's envelope is removed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct QaRequest {
    /// Which model answers; the default model when absent.
    #[serde(default)]
    pub model_type: Option<String>,
    pub question: String,
    pub context: String,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub max_answer_len: Option<u32>,
    #[serde(default)]
    pub handle_impossible_answer: Option<bool>,
    #[serde(default)]
    pub max_seq_len: Option<u32>,
    #[serde(default)]
    pub doc_stride: Option<u32>,
}

impl QaRequest {
    /// A request for the default model with default options.
    pub fn new(question: impl Into<String>, context: impl Into<String>) -> Self {
        Self {
            model_type: None,
            question: question.into(),
            context: context.into(),
            top_k: None,
            max_answer_len: None,
            handle_impossible_answer: None,
            max_seq_len: None,
            doc_stride: None,
        }
    }

    /// Parses a JSON body, telling malformed JSON (`bad_json`) from well-formed JSON with a
    /// missing or mistyped field (`invalid_field`).
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        if body.len() > limits::MAX_BODY_BYTES {
            return Err(ApiError::BodyTooLarge { len: body.len(), limit: limits::MAX_BODY_BYTES });
        }
        serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::InvalidField(e.to_string()),
            _ => ApiError::BadJson(e.to_string()),
        })
    }

    /// Checks sizes and option ranges; emptiness counts after trimming white space.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.question.trim().is_empty() {
            return Err(ApiError::EmptyQuestion);
        }
        if self.context.trim().is_empty() {
            return Err(ApiError::EmptyContext);
        }
        if self.question.len() > limits::MAX_QUESTION_BYTES {
            return Err(ApiError::QuestionTooLong { len: self.question.len(), limit: limits::MAX_QUESTION_BYTES });
        }
        if self.context.len() > limits::MAX_CONTEXT_BYTES {
            return Err(ApiError::ContextTooLarge { len: self.context.len(), limit: limits::MAX_CONTEXT_BYTES });
        }
        let range = |name: &str, value: Option<u32>, min: u32, max: u32| match value {
            Some(v) if !(min..=max).contains(&v) => Err(ApiError::InvalidField(format!("{name} must be between {min} and {max}, got {v}"))),
            _ => Ok(()),
        };
        range("top_k", self.top_k, 1, limits::MAX_TOP_K)?;
        range("max_answer_len", self.max_answer_len, 1, limits::MAX_ANSWER_LEN)?;
        range("max_seq_len", self.max_seq_len, 32, limits::MAX_SEQ_LEN)?;
        range("doc_stride", self.doc_stride, 1, limits::MAX_SEQ_LEN)?;
        Ok(())
    }
}

/// One answer: `start..end` are character offsets into the context, `text` that slice.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct AnswerSpan {
    pub text: String,
    pub score: f64,
    pub start: u32,
    pub end: u32,
}

/// Milliseconds per phase: making the model available (`fetch`), the whole guest call
/// (`guest`), and inside it `tokenize`, `inference` and `decode` (span scoring and answer
/// extraction); `total` is the request end to end.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PhaseTimings {
    pub fetch: f64,
    pub guest: f64,
    pub tokenize: f64,
    pub inference: f64,
    pub decode: f64,
    pub total: f64,
}

/// The sample's response body, extended. The first three keys keep the sample's spelling.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct QaResponse {
    #[serde(rename = "Model_Type")]
    pub model_type: String,
    #[serde(rename = "Question")]
    pub question: String,
    /// The best answer's text ("" when the best answer is "no answer").
    #[serde(rename = "Answer")]
    pub answer: String,
    pub score: f64,
    pub start: u32,
    pub end: u32,
    pub answers: Vec<AnswerSpan>,
    /// Windows the context was split into.
    pub windows: u32,
    /// Version of the model's files that answered (changes when the stored model changes).
    pub model_version: String,
    pub timings_ms: PhaseTimings,
    /// Whether this request had to load the model (a model-cache miss); for metrics only.
    #[serde(skip)]
    pub model_loaded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(question: &str, context: &str) -> QaRequest {
        QaRequest::new(question, context)
    }

    #[test]
    fn sample_body_parses() {
        let body = br#"{"model_type": "nlp1","question": "When was the car invented?","context": "Cars came into global use."}"#;
        let req = QaRequest::from_json(body).unwrap();
        assert_eq!(req.model_type.as_deref(), Some("nlp1"));
        assert!(req.validate().is_ok());
    }

    #[test]
    fn syntax_errors_and_type_errors_get_different_codes() {
        assert_eq!(QaRequest::from_json(b"{\"question\": ").unwrap_err().code(), "bad_json");
        assert_eq!(QaRequest::from_json(b"not json").unwrap_err().code(), "bad_json");
        assert_eq!(QaRequest::from_json(br#"{"question": 5, "context": "c"}"#).unwrap_err().code(), "invalid_field");
        assert_eq!(QaRequest::from_json(br#"{"context": "c"}"#).unwrap_err().code(), "invalid_field");
        assert_eq!(QaRequest::from_json(br#"[1,2]"#).unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn limits_and_ranges_are_enforced() {
        assert_eq!(request(" \n", "c").validate().unwrap_err().code(), "empty_question");
        assert_eq!(request("q", "").validate().unwrap_err().code(), "empty_context");
        let long = "x".repeat(limits::MAX_QUESTION_BYTES + 1);
        assert_eq!(request(&long, "c").validate().unwrap_err().status(), 413);
        let huge = "x".repeat(limits::MAX_CONTEXT_BYTES + 1);
        assert_eq!(request("q", &huge).validate().unwrap_err().code(), "context_too_large");
        for top_k in [0, limits::MAX_TOP_K + 1, 1_000_000_000] {
            let mut r = request("q", "c");
            r.top_k = Some(top_k);
            assert_eq!(r.validate().unwrap_err().code(), "invalid_field", "top_k {top_k}");
        }
        let body = vec![b' '; limits::MAX_BODY_BYTES + 1];
        assert_eq!(QaRequest::from_json(&body).unwrap_err().code(), "body_too_large");
    }

    #[test]
    fn negative_numbers_are_field_errors() {
        let err = QaRequest::from_json(br#"{"question":"q","context":"c","top_k":-1}"#).unwrap_err();
        assert_eq!(err.code(), "invalid_field");
    }

    #[test]
    fn response_keeps_the_sample_spelling() {
        let response = QaResponse {
            model_type: "nlp1".into(),
            question: "q".into(),
            answer: "1886".into(),
            score: 0.9,
            start: 1,
            end: 5,
            answers: vec![],
            windows: 1,
            model_version: "image".into(),
            timings_ms: PhaseTimings::default(),
            model_loaded: true,
        };
        let json = serde_json::to_value(&response).unwrap();
        for key in ["Model_Type", "Question", "Answer", "score", "start", "end", "answers", "timings_ms"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(json.get("model_loaded").is_none(), "internal fields stay out of the body");
    }
}
