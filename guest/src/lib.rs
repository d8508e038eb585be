//! Extractive question answering as plain Rust stages.
//!
//! The pipeline mirrors the Hugging Face question-answering pipeline:
//! [`tokenize`] (question + context into overlapping windows, offsets kept) →
//! [`window`] (padded tensors for one batched inference) → an [`infer::QaModel`] (start/end
//! logits; wasi-nn in the component, a stub in tests) → [`score`] (masked softmax, span
//! scoring, top-k) → [`extract`] (token spans to exact slices of the context, merged across
//! windows). [`pipeline::answer`] runs them in order; [`decode`] holds what the two decodings
//! do differently (how windows are cut, batched and ranked), one file each.
//!
//! Nothing here touches wasm or wasi-nn, so every stage is unit-tested natively; the component
//! binding lives in `component.rs` and `component/wasi_nn_model.rs` (built into the `main.rs`
//! binary).

pub mod decode;
pub mod extract;
pub mod fixture;
pub mod infer;
pub mod pipeline;
pub mod score;
pub mod tokenize;
pub mod window;

#[cfg(test)]
mod props;

/// Decoding knobs. Defaults ([`Options::DEFAULT`]) follow the transformers question-answering
/// pipeline, except the decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// How many answers to return, best first.
    pub top_k: usize,
    /// Longest answer, in tokens.
    pub max_answer_len: usize,
    /// Window length in tokens (question + context + special tokens).
    pub max_seq_len: usize,
    /// Tokens shared by consecutive windows of a long context.
    pub doc_stride: usize,
    /// Longest question, in tokens; longer questions are refused, never silently cut.
    pub max_question_len: usize,
    /// Also offer the empty answer, scored by the model's "no answer" (CLS) probability.
    pub handle_impossible: bool,
    /// Most windows one call may run inference on, all questions together (0: no limit). A
    /// call over it is refused before any inference.
    pub max_windows: usize,
    /// How windows are cut and their answers compared.
    pub decoding: Decoding,
}

pub use qa_options::Decoding;

impl Options {
    /// The defaults (`guest/options/defaults.json`), usable in constants.
    pub const DEFAULT: Self = Self {
        top_k: qa_options::TOP_K,
        max_answer_len: qa_options::MAX_ANSWER_LEN,
        max_seq_len: qa_options::MAX_SEQ_LEN,
        doc_stride: qa_options::DOC_STRIDE,
        max_question_len: qa_options::MAX_QUESTION_LEN,
        handle_impossible: qa_options::HANDLE_IMPOSSIBLE_ANSWER,
        max_windows: 0,
        decoding: qa_options::DECODING,
    };
}

impl Default for Options {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One answer: `start..end` are **character** offsets into the context (end exclusive) and
/// `text` is exactly that slice of the context.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    pub score: f64,
    pub start: usize,
    pub end: usize,
}

/// A question's answers (best first) and where its time went.
pub type Answered = (Vec<Answer>, Timings);

/// Why a question could not be answered. Variants map one-to-one onto the WIT `qa-error`.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum QaError {
    /// The request itself is unusable (empty question, question too long).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An option does not fit this request (a stride that leaves no room for the context).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The context needs more windows than the call may run.
    #[error("too many windows: {0}")]
    TooManyWindows(String),
    /// The model's files are missing or the runtime has no graph by that name.
    #[error("model not found: {0}")]
    ModelNotFound(String),
    /// The model's files exist but are unusable (tokenizer.json does not parse, bad config).
    #[error("model invalid: {0}")]
    ModelInvalid(String),
    /// Inference ran and failed, or returned tensors of an unexpected shape.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Where time went inside one call, for the host's per-phase timings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    pub tokenize_us: u64,
    pub inference_us: u64,
    pub decode_us: u64,
    pub windows: u32,
}
