//! Every way a request can fail, each with a stable code and an HTTP status. The layers' own
//! errors become an [`ApiError`] here and nowhere else (a model from the cache,
//! [`ApiError::from_guest_error`] for a guest call); edges convert an [`ApiError`] once, with
//! [`ApiError::body`].

use crate::guest::{GuestError, GuestQaError};
use crate::model_cache::CacheError;
use crate::models::SourceError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("request is missing a field or has one of the wrong type: {0}")]
    InvalidField(String),
    #[error("question is empty")]
    EmptyQuestion,
    #[error("context is empty")]
    EmptyContext,
    #[error("request body is {len} bytes; the limit is {limit}")]
    BodyTooLarge { len: usize, limit: usize },
    #[error("question is {len} bytes; the limit is {limit}")]
    QuestionTooLong { len: usize, limit: usize },
    #[error("context is {len} bytes; the limit is {limit}")]
    ContextTooLarge { len: usize, limit: usize },
    #[error("unknown model_type {name:?}; available: {available}")]
    UnknownModel { name: String, available: String },
    /// The guest refused the input (for example a question over its token limit).
    #[error("{0}")]
    GuestRejected(String),
    /// The context needs more windows than one request may run.
    #[error("{0}")]
    TooManyWindows(String),
    #[error("model {name:?} is not in its storage: {reason}")]
    ModelNotFound { name: String, reason: String },
    #[error("model {name:?} failed verification: {reason}")]
    ModelCorrupt { name: String, reason: String },
    #[error("model {name:?} is unusable: {reason}")]
    ModelInvalid { name: String, reason: String },
    #[error("model {name:?} is unavailable: {reason}")]
    ModelUnavailable { name: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the QA guest timed out: {0}")]
    GuestTimeout(String),
    #[error("the QA guest failed: {0}")]
    GuestFailed(String),
    #[error("the server is answering as many requests as it may; retry after the Retry-After header's seconds")]
    Overloaded,
    #[error("the request took longer than the server allows (body upload and answer together)")]
    RequestTimeout,
    #[error("internal error: {0}")]
    Internal(String),
    /// An error the guest phase ended in, and which guest ran (a canary, or the serving
    /// guest): its body names the guest, as an answer's does.
    #[error("{error}")]
    Guest { guest_version: String, error: Box<ApiError> },
}

impl From<CacheError> for ApiError {
    fn from(error: CacheError) -> Self {
        match error {
            CacheError::Unknown { name, available } => Self::UnknownModel { name, available },
            CacheError::Source { name, source: SourceError::NotFound(reason) } => Self::ModelNotFound { name, reason },
            CacheError::Source { name, source: SourceError::Unavailable(reason) } => Self::ModelUnavailable { name, reason },
            CacheError::Source { name, source: SourceError::Corrupt(reason) } => Self::ModelCorrupt { name, reason },
            CacheError::Directory { name, source } => Self::ModelUnavailable { name, reason: format!("the model's directory: {source}") },
            // The client is told the reason without host paths; the log has the whole error.
            CacheError::Invalid { name, source } => Self::ModelInvalid { name, reason: source.client_reason() },
            CacheError::Loader(error) => Self::Internal(format!("model loader: {error}")),
            CacheError::Internal(what) => Self::Internal(what.into()),
        }
    }
}

impl ApiError {
    /// `error`, which a guest call for `model` ended in, as the API reports it.
    pub fn from_guest_error(model: &str, error: GuestError) -> Self {
        match error {
            GuestError::Qa(GuestQaError::InvalidInput(m)) => Self::GuestRejected(m),
            GuestError::Qa(GuestQaError::InvalidOption(m)) => Self::InvalidField(m),
            GuestError::Qa(GuestQaError::TooManyWindows(m)) => Self::TooManyWindows(m),
            GuestError::Qa(GuestQaError::ModelNotFound(m) | GuestQaError::ModelInvalid(m)) => {
                Self::ModelInvalid { name: model.to_string(), reason: m }
            }
            GuestError::Qa(GuestQaError::Inference(m)) => Self::Inference(m),
            GuestError::Prepare { model, reason } => Self::ModelInvalid { name: model, reason },
            GuestError::Timeout(_) => Self::GuestTimeout(error.to_string()),
            // Retryable: an instance, or its memory, comes free as soon as a request in flight ends.
            GuestError::Busy(_) | GuestError::Crowded { .. } => Self::Overloaded,
            other => Self::GuestFailed(other.to_string()),
        }
    }

    /// `error` as the guest `guest_version` ended in it.
    pub fn from_guest(guest_version: &str, error: ApiError) -> Self {
        Self::Guest { guest_version: guest_version.to_string(), error: Box::new(error) }
    }

    /// What went wrong, whichever guest ran.
    pub fn kind(&self) -> &ApiError {
        match self {
            Self::Guest { error, .. } => error.kind(),
            other => other,
        }
    }

    /// Stable machine-readable code, part of the API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Guest { error, .. } => error.code(),
            Self::BadJson(_) => "bad_json",
            Self::InvalidField(_) => "invalid_field",
            Self::EmptyQuestion => "empty_question",
            Self::EmptyContext => "empty_context",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::QuestionTooLong { .. } => "question_too_long",
            Self::ContextTooLarge { .. } => "context_too_large",
            Self::UnknownModel { .. } => "unknown_model",
            Self::GuestRejected(_) => "invalid_input",
            Self::TooManyWindows(_) => "too_many_windows",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::ModelCorrupt { .. } => "model_corrupt",
            Self::ModelInvalid { .. } => "model_invalid",
            Self::ModelUnavailable { .. } => "model_unavailable",
            Self::Inference(_) => "inference_failed",
            Self::GuestTimeout(_) => "guest_timeout",
            Self::GuestFailed(_) => "guest_failed",
            Self::Overloaded => "overloaded",
            Self::RequestTimeout => "request_timeout",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Guest { error, .. } => error.status(),
            Self::BadJson(_) | Self::InvalidField(_) | Self::EmptyQuestion | Self::EmptyContext | Self::GuestRejected(_) => 400,
            Self::UnknownModel { .. } | Self::ModelNotFound { .. } => 404,
            Self::BodyTooLarge { .. } | Self::QuestionTooLong { .. } | Self::ContextTooLarge { .. } | Self::TooManyWindows(_) => 413,
            Self::ModelUnavailable { .. } | Self::ModelCorrupt { .. } | Self::Overloaded => 503,
            Self::RequestTimeout => 408,
            Self::ModelInvalid { .. } | Self::Inference(_) | Self::GuestTimeout(_) | Self::GuestFailed(_) | Self::Internal(_) => 500,
        }
    }

    /// One error of each kind (every code once), for what must list them all: the OpenAPI
    /// document and the playground's messages are checked against it (and a new kind fails
    /// to compile in this file's tests until it is added here).
    pub fn examples() -> Vec<ApiError> {
        let examples = vec![
            Self::BadJson("expected value at line 1 column 1".into()),
            Self::InvalidField("top_k must be between 1 and 20, got 0".into()),
            Self::EmptyQuestion,
            Self::EmptyContext,
            Self::BodyTooLarge { len: 2 << 20, limit: super::limits::MAX_BODY_BYTES },
            Self::QuestionTooLong { len: 2_001, limit: super::limits::MAX_QUESTION_BYTES },
            Self::ContextTooLarge { len: 200_001, limit: super::limits::MAX_CONTEXT_BYTES },
            Self::UnknownModel { name: "nlp9".into(), available: "nlp1".into() },
            Self::GuestRejected("the question has 70 tokens; the limit is 64".into()),
            Self::TooManyWindows("the context needs 300 windows; the limit is 256".into()),
            Self::ModelNotFound { name: "nlp1".into(), reason: "no model.onnx in its storage".into() },
            Self::ModelCorrupt { name: "nlp1".into(), reason: "its SHA-256 is not the manifest's".into() },
            Self::ModelInvalid { name: "nlp1".into(), reason: "tokenizer.json does not load".into() },
            Self::ModelUnavailable { name: "nlp1".into(), reason: "S3 could not be reached".into() },
            Self::Inference("an input the model requires was not sent".into()),
            Self::GuestTimeout("30 s".into()),
            Self::GuestFailed("trapped".into()),
            Self::Overloaded,
            Self::RequestTimeout,
            Self::Internal("an example".into()),
        ];
        examples
    }

    /// `{"error": {"code", "message", "request_id"}}`, and `guest_version` when a guest ran.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string(), "request_id": request_id}});
        if let Self::Guest { guest_version, .. } = self {
            body["error"]["guest_version"] = json!(guest_version);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kinds of error, each with its own code.
    const KINDS: usize = 20;

    /// Each kind's place among the examples: a new variant does not compile until it has one
    /// (and then `examples_hold_every_kind_once` wants its example).
    fn kind_index(error: &ApiError) -> Option<usize> {
        Some(match error {
            ApiError::Guest { .. } => return None,
            ApiError::BadJson(_) => 0,
            ApiError::InvalidField(_) => 1,
            ApiError::EmptyQuestion => 2,
            ApiError::EmptyContext => 3,
            ApiError::BodyTooLarge { .. } => 4,
            ApiError::QuestionTooLong { .. } => 5,
            ApiError::ContextTooLarge { .. } => 6,
            ApiError::UnknownModel { .. } => 7,
            ApiError::GuestRejected(_) => 8,
            ApiError::TooManyWindows(_) => 9,
            ApiError::ModelNotFound { .. } => 10,
            ApiError::ModelCorrupt { .. } => 11,
            ApiError::ModelInvalid { .. } => 12,
            ApiError::ModelUnavailable { .. } => 13,
            ApiError::Inference(_) => 14,
            ApiError::GuestTimeout(_) => 15,
            ApiError::GuestFailed(_) => 16,
            ApiError::Overloaded => 17,
            ApiError::RequestTimeout => 18,
            ApiError::Internal(_) => 19,
        })
    }

    #[test]
    fn examples_hold_every_kind_once() {
        let mut seen: Vec<usize> = ApiError::examples().iter().map(|e| kind_index(e).expect("no wrapper among the examples")).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..KINDS).collect::<Vec<_>>());
        let mut codes: Vec<&str> = ApiError::examples().iter().map(ApiError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), KINDS, "every kind has a code of its own");
    }
}
