//! The request and response every edge speaks: the original AWS sample's
//! `{"model_type","question","context"}` in and `Model_Type`/`Question`/`Answer` out, plus
//! scores, character offsets, top-k answers and per-phase timings. The limits live here too,
//! so every edge enforces the same ones.

mod error;

pub use error::ApiError;

pub use crate::guest::{Answer, PhaseTimings};

use crate::guest::{Decoding, Options};
use serde::{Deserialize, Serialize};

/// Limits on a request (documented in docs/api.md).
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
    /// Questions in one request (`questions`).
    pub const MAX_QUESTIONS: usize = 32;
}

/// A question (or several, `questions`) as it arrives, after the transport's envelope is
/// removed. Its JSON form is [`RawRequest`]'s.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "RawRequest", into = "RawRequest")]
pub struct QaRequest {
    /// Which model answers; the default model when absent.
    pub model_type: Option<String>,
    pub questions: Questions,
    pub context: String,
    pub top_k: Option<u32>,
    pub max_answer_len: Option<u32>,
    pub handle_impossible_answer: Option<bool>,
    pub max_seq_len: Option<u32>,
    pub doc_stride: Option<u32>,
    /// How answers of different windows compare: `document` (the default) or `pipeline` (the
    /// transformers pipeline's per-window scores).
    pub decoding: Option<Decoding>,
}

/// What a request asks: one question (`question`), or several over the one context
/// (`questions`, 1 to [`limits::MAX_QUESTIONS`], answered in one call; the response then has
/// `results`).
#[derive(Clone, Debug, PartialEq)]
pub enum Questions {
    One(String),
    Many(Vec<String>),
}

/// The body as written: `question` or `questions`, one of the two. An option given as `null`
/// is left out (`docs/openapi.yaml` says so); `question` and `questions` must be what they say.
#[derive(Deserialize, Serialize)]
struct RawRequest {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default, deserialize_with = "given", skip_serializing_if = "Option::is_none")]
    question: Option<String>,
    #[serde(default, deserialize_with = "given", skip_serializing_if = "Option::is_none")]
    questions: Option<Vec<String>>,
    context: String,
    #[serde(default, deserialize_with = "whole_number")]
    top_k: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    max_answer_len: Option<u32>,
    #[serde(default)]
    handle_impossible_answer: Option<bool>,
    #[serde(default, deserialize_with = "whole_number")]
    max_seq_len: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    doc_stride: Option<u32>,
    /// A string here, parsed in `try_from`: serde_json reports a non-string where an enum is
    /// expected as a syntax error, which would make `"decoding": true` a `bad_json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decoding: Option<String>,
}

/// A field that, when present, must be a `T` (not `null`); absent, it is `None`.
fn given<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A count: JSON has one number type, so `3.0` is 3 (as JSON Schema's `integer` has it), while
/// `1.5`, negative numbers and numbers past `u32` are refused.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    use serde::de::{Error, Unexpected};
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else { return Ok(None) };
    let expected = &"a whole number from 0 to 4294967295";
    if let Some(n) = number.as_u64() {
        return u32::try_from(n).map(Some).map_err(|_| D::Error::invalid_value(Unexpected::Unsigned(n), expected));
    }
    if let Some(n) = number.as_i64() {
        return Err(D::Error::invalid_value(Unexpected::Signed(n), expected));
    }
    let n = number.as_f64().unwrap_or(f64::NAN);
    if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) {
        // Whole and in range: the conversion is exact.
        return Ok(Some(n as u32));
    }
    Err(D::Error::invalid_value(Unexpected::Float(n), expected))
}

impl From<QaRequest> for RawRequest {
    fn from(request: QaRequest) -> Self {
        let (question, questions) = match request.questions {
            Questions::One(question) => (Some(question), None),
            Questions::Many(questions) => (None, Some(questions)),
        };
        RawRequest {
            model_type: request.model_type,
            question,
            questions,
            context: request.context,
            top_k: request.top_k,
            max_answer_len: request.max_answer_len,
            handle_impossible_answer: request.handle_impossible_answer,
            max_seq_len: request.max_seq_len,
            doc_stride: request.doc_stride,
            decoding: request.decoding.map(|d| d.name().to_string()),
        }
    }
}

impl TryFrom<RawRequest> for QaRequest {
    type Error = String;

    fn try_from(raw: RawRequest) -> Result<Self, String> {
        let questions = match (raw.question, raw.questions) {
            (Some(question), None) => Questions::One(question),
            (None, Some(questions)) => Questions::Many(questions),
            (None, None) => return Err("missing field `question` (or `questions`)".into()),
            (Some(_), Some(_)) => return Err("give `question` or `questions`, not both".into()),
        };
        Ok(QaRequest {
            model_type: raw.model_type,
            questions,
            context: raw.context,
            top_k: raw.top_k,
            max_answer_len: raw.max_answer_len,
            handle_impossible_answer: raw.handle_impossible_answer,
            max_seq_len: raw.max_seq_len,
            doc_stride: raw.doc_stride,
            decoding: raw.decoding.as_deref().map(Decoding::from_name).transpose()?,
        })
    }
}

impl QaRequest {
    /// A request for the default model with default options.
    pub fn new(question: impl Into<String>, context: impl Into<String>) -> Self {
        Self {
            model_type: None,
            questions: Questions::One(question.into()),
            context: context.into(),
            top_k: None,
            max_answer_len: None,
            handle_impossible_answer: None,
            max_seq_len: None,
            doc_stride: None,
            decoding: None,
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

    /// Several questions over one context: same options, one call.
    pub fn many(questions: Vec<String>, context: impl Into<String>) -> Self {
        Self { questions: Questions::Many(questions), ..Self::new("", context) }
    }

    /// Checks sizes and option ranges; emptiness counts after trimming white space. With
    /// `questions`, each question is checked on its own ([`check_question`]): a bad one fails
    /// only its entry.
    pub fn validate(&self) -> Result<(), ApiError> {
        match &self.questions {
            Questions::One(question) => check_question(question)?,
            Questions::Many(questions) if questions.is_empty() || questions.len() > limits::MAX_QUESTIONS => {
                return Err(ApiError::InvalidField(format!(
                    "questions must hold 1 to {} questions, got {}",
                    limits::MAX_QUESTIONS,
                    questions.len()
                )));
            }
            Questions::Many(_) => {}
        }
        if self.context.trim().is_empty() {
            return Err(ApiError::EmptyContext);
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

    /// The options the guest gets: the request's, and the defaults (`guest/options/defaults.json`)
    /// for the fields it leaves out.
    pub fn options(&self, max_windows: u32) -> Options {
        // The defaults are checked to fit in u32 when they are built.
        let default = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        let max_seq_len = self.max_seq_len.unwrap_or(default(qa_options::MAX_SEQ_LEN));
        Options {
            top_k: self.top_k.unwrap_or(default(qa_options::TOP_K)),
            max_answer_len: self.max_answer_len.unwrap_or(default(qa_options::MAX_ANSWER_LEN)),
            max_seq_len,
            doc_stride: self.doc_stride.unwrap_or_else(|| default(qa_options::doc_stride_for(max_seq_len as usize))),
            max_question_len: default(qa_options::MAX_QUESTION_LEN),
            handle_impossible: self.handle_impossible_answer.unwrap_or(qa_options::HANDLE_IMPOSSIBLE_ANSWER),
            max_windows,
            decoding: self.decoding.unwrap_or(qa_options::DECODING),
        }
    }
}

/// A question's own checks: not empty, not over the byte limit.
pub fn check_question(question: &str) -> Result<(), ApiError> {
    if question.trim().is_empty() {
        return Err(ApiError::EmptyQuestion);
    }
    if question.len() > limits::MAX_QUESTION_BYTES {
        return Err(ApiError::QuestionTooLong { len: question.len(), limit: limits::MAX_QUESTION_BYTES });
    }
    Ok(())
}

/// A response: what every answer shares (this envelope) around the answers themselves
/// (`body`, whose fields sit beside the envelope's in the JSON). The first keys keep the
/// sample's spelling: `Model_Type`, then the body's `Question` and `Answer`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Reply<B> {
    #[serde(rename = "Model_Type")]
    pub model_type: String,
    #[serde(flatten)]
    pub body: B,
    /// Windows inference ran on (all questions together).
    pub windows: u32,
    /// Version of the model's files that answered (changes when the stored model changes).
    pub model_version: String,
    /// Which guest answered: the first 12 hex digits of its `.wasm`'s SHA-256.
    #[serde(default)]
    pub guest_version: String,
    /// The call's phases (summed over the questions inside the guest).
    pub timings_ms: PhaseTimings,
    /// Whether this request had to load the model (a model-cache miss); for metrics only.
    #[serde(skip)]
    pub model_loaded: bool,
}

/// The answer to one question: the sample's body, extended.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct OneAnswer {
    #[serde(rename = "Question")]
    pub question: String,
    /// The best answer's text ("" when the best answer is "no answer").
    #[serde(rename = "Answer")]
    pub answer: String,
    pub score: f64,
    pub start: u32,
    pub end: u32,
    pub answers: Vec<Answer>,
}

impl OneAnswer {
    /// The body for `question` answered with `answers` (best first).
    pub fn new(question: String, answers: Vec<Answer>) -> Self {
        let best = Answer::best(&answers);
        Self { question, answer: best.text, score: best.score, start: best.start, end: best.end, answers }
    }
}

/// The answers to `questions`: one entry per question, in order.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ManyAnswers {
    pub results: Vec<QaResult>,
}

/// Either body.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Answers {
    One(OneAnswer),
    Many(ManyAnswers),
}

/// The response to one question.
pub type QaResponse = Reply<OneAnswer>;
/// The response to `questions`.
pub type QaBatchResponse = Reply<ManyAnswers>;
/// An answered request: one question, or several.
pub type QaReply = Reply<Answers>;

impl<B> std::ops::Deref for Reply<B> {
    type Target = B;

    fn deref(&self) -> &B {
        &self.body
    }
}

impl<B> Reply<B> {
    /// The same envelope around `f(body)`.
    pub fn map<C>(self, f: impl FnOnce(B) -> C) -> Reply<C> {
        let Reply { model_type, body, windows, model_version, guest_version, timings_ms, model_loaded } = self;
        Reply { model_type, body: f(body), windows, model_version, guest_version, timings_ms, model_loaded }
    }
}

impl From<QaResponse> for QaReply {
    fn from(reply: QaResponse) -> Self {
        reply.map(Answers::One)
    }
}

impl From<QaBatchResponse> for QaReply {
    fn from(reply: QaBatchResponse) -> Self {
        reply.map(Answers::Many)
    }
}

/// One question's entry in a many-question response: the single response's answer fields,
/// or the error that question alone met.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct QaResult {
    #[serde(rename = "Question")]
    pub question: String,
    #[serde(rename = "Answer", default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<Answer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EntryError>,
}

/// A question's own error: the code and status it would get alone.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct EntryError {
    pub code: String,
    pub message: String,
    pub status: u16,
}

impl QaResult {
    /// The entry for `question` answered with `answers` (best first).
    pub fn answered(question: String, answers: Vec<Answer>) -> Self {
        let best = Answer::best(&answers);
        QaResult {
            question,
            answer: Some(best.text),
            score: Some(best.score),
            start: Some(best.start),
            end: Some(best.end),
            answers: Some(answers),
            error: None,
        }
    }

    /// The entry for `question` that failed with `error`.
    pub fn failed(question: String, error: &ApiError) -> Self {
        let error = EntryError { code: error.code().to_string(), message: error.to_string(), status: error.status() };
        QaResult { question, answer: None, score: None, start: None, end: None, answers: None, error: Some(error) }
    }
}

/// Where the rollout stands (`/health`'s `rollout`, and `GET /metrics`); reported by
/// [`crate::rollout`].
#[derive(Clone, Debug, Serialize)]
pub struct RolloutStatus {
    /// `shadow` or `canary`.
    pub mode: &'static str,
    /// The candidate's version.
    pub candidate: String,
    /// `taking part`, `rolled back` or `promoted`.
    pub state: &'static str,
    /// The candidate's share of requests.
    pub percent: f64,
    /// Candidate calls in the judging window.
    pub calls: usize,
    pub failure_rate: f64,
    /// Share of shadow calls that agreed; `None` before the first.
    pub shadow_agreement: Option<f64>,
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
    fn questions_replace_question_and_are_bounded() {
        let many = QaRequest::from_json(br#"{"questions": ["Who?", "When?"], "context": "c"}"#).unwrap();
        assert_eq!(many.questions, Questions::Many(vec!["Who?".to_string(), "When?".to_string()]));
        assert!(many.validate().is_ok());
        let both = QaRequest::from_json(br#"{"question": "q", "questions": ["Who?"], "context": "c"}"#).unwrap_err();
        assert_eq!(both.code(), "invalid_field");
        assert!(both.to_string().contains("not both"), "{both}");
        let neither = QaRequest::from_json(br#"{"context": "c"}"#).unwrap_err();
        assert!(neither.to_string().contains("missing field `question`"), "{neither}");
        assert_eq!(QaRequest::from_json(br#"{"questions": [1], "context": "c"}"#).unwrap_err().code(), "invalid_field");
        for count in [0, limits::MAX_QUESTIONS + 1] {
            let request = QaRequest::many(vec!["q".into(); count], "c");
            assert_eq!(request.validate().unwrap_err().code(), "invalid_field", "{count} questions");
        }
        // A bad question is its own entry's problem, not the request's.
        assert!(QaRequest::many(vec!["".into(), "q".into()], "c").validate().is_ok());
    }

    #[test]
    fn negative_numbers_are_field_errors() {
        let err = QaRequest::from_json(br#"{"question":"q","context":"c","top_k":-1}"#).unwrap_err();
        assert_eq!(err.code(), "invalid_field");
    }

    /// JSON has one number type: `3.0` is the count 3 (JSON Schema's `integer` takes it too);
    /// a fraction, a negative number or one past `u32` is not a count.
    #[test]
    fn counts_are_whole_numbers_written_either_way() {
        let top_k = |value: &str| QaRequest::from_json(format!(r#"{{"question":"q","context":"c","top_k":{value}}}"#).as_bytes());
        for (written, count) in [("3", 3), ("3.0", 3), ("3e0", 3), ("0.0", 0), ("4294967295", u32::MAX), ("4294967295.0", u32::MAX)] {
            assert_eq!(top_k(written).unwrap().top_k, Some(count), "{written}");
        }
        for written in ["1.5", "-1", "-1.0", "4294967296", "1e30", "\"3\"", "true"] {
            let error = top_k(written).unwrap_err();
            assert_eq!(error.code(), "invalid_field", "{written}: {error}");
        }
        assert!(top_k("1.5").unwrap_err().to_string().contains("expected a whole number"));
    }

    /// An option given as `null` is left out; the question itself never is.
    #[test]
    fn null_options_are_left_out_and_a_null_question_is_refused() {
        let parse = |body: &str| QaRequest::from_json(body.as_bytes());
        let options = r#""model_type":null,"top_k":null,"max_answer_len":null,"handle_impossible_answer":null,"max_seq_len":null,"doc_stride":null,"decoding":null"#;
        let request = parse(&format!(r#"{{"question":"q","context":"c",{options}}}"#)).unwrap();
        assert_eq!(request, QaRequest::new("q", "c"));
        for body in [
            r#"{"question":null,"context":"c"}"#,
            r#"{"question":null,"questions":["q"],"context":"c"}"#,
            r#"{"questions":null,"question":"q","context":"c"}"#,
            r#"{"question":"q","context":null}"#,
        ] {
            assert_eq!(parse(body).unwrap_err().code(), "invalid_field", "{body}");
        }
    }

    #[test]
    fn options_a_request_leaves_out_are_the_defaults_file_and_the_rest_pass_through() {
        let parse = |body: &str| QaRequest::from_json(body.as_bytes());
        let defaults = QaRequest::new("q", "c").options(7);
        // docs/api.md's request table, default column (and its limits table's 64-token question).
        assert_eq!(
            (defaults.top_k, defaults.max_answer_len, defaults.max_seq_len, defaults.doc_stride, defaults.max_question_len),
            (1, 15, 384, 128, 64)
        );
        assert_eq!((defaults.handle_impossible, defaults.decoding), (false, Decoding::Document));
        // Read from the defaults file, not written again here.
        assert_eq!(defaults.top_k as usize, qa_options::TOP_K);
        assert_eq!(defaults.max_answer_len as usize, qa_options::MAX_ANSWER_LEN);
        assert_eq!(defaults.max_seq_len as usize, qa_options::MAX_SEQ_LEN);
        assert_eq!(defaults.doc_stride as usize, qa_options::DOC_STRIDE);
        assert_eq!(defaults.max_question_len as usize, qa_options::MAX_QUESTION_LEN);
        assert_eq!(defaults.handle_impossible, qa_options::HANDLE_IMPOSSIBLE_ANSWER);
        assert_eq!(defaults.decoding, qa_options::DECODING);
        assert_eq!(defaults.max_windows, 7);
        let short = parse(r#"{"question":"q","context":"c","max_seq_len":64}"#).unwrap().options(0);
        assert_eq!(short.doc_stride, 32, "a short window's default stride is half of it");
        let set = parse(
            r#"{"question":"q","context":"c","top_k":3,"max_answer_len":40,"max_seq_len":256,"doc_stride":50,
                "handle_impossible_answer":true,"decoding":"pipeline"}"#,
        )
        .unwrap()
        .options(0);
        assert_eq!(
            (set.top_k, set.max_answer_len, set.max_seq_len, set.doc_stride, set.handle_impossible, set.decoding),
            (3, 40, 256, 50, true, Decoding::Pipeline)
        );
    }

    #[test]
    fn decoding_is_document_or_pipeline_and_round_trips() {
        let parse = |body: &str| QaRequest::from_json(body.as_bytes());
        assert_eq!(parse(r#"{"question":"q","context":"c"}"#).unwrap().decoding, None);
        let pipeline = parse(r#"{"question":"q","context":"c","decoding":"pipeline"}"#).unwrap();
        assert_eq!(pipeline.decoding, Some(Decoding::Pipeline));
        assert_eq!(serde_json::to_value(&pipeline).unwrap()["decoding"], "pipeline");
        for bad in [r#""window""#, "true", "1", r#"["document"]"#] {
            let err = parse(&format!(r#"{{"question":"q","context":"c","decoding":{bad}}}"#)).unwrap_err();
            assert_eq!(err.code(), "invalid_field", "{bad}: {err}");
        }
        assert!(parse(r#"{"question":"q","context":"c","decoding":"window"}"#).unwrap_err().to_string().contains(r#"got "window""#));
    }

    #[test]
    fn response_keeps_the_sample_spelling() {
        let response = QaResponse {
            model_type: "nlp1".into(),
            body: OneAnswer { question: "q".into(), answer: "1886".into(), score: 0.9, start: 1, end: 5, answers: vec![] },
            windows: 1,
            model_version: "image".into(),
            guest_version: "0123456789ab".into(),
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
