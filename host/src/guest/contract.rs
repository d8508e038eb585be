//! The contract versions this host runs, and the one set of host-side types both map to.
//!
//! - `qa:extractive/qa@0.3.0` (`wit/qa.wit`): `prepare`, `ask`, `ask-many`, and the
//!   `decoding` option;
//! - `qa:extractive/qa@0.2.0` (`wit/deps/qa-extractive-0.2.0`): the same without `decoding`
//!   (such a guest ranks as it was built to: the shipped 0.2 guest per window);
//! - `qa:extractive/qa@0.1.0` (`wit/deps/qa-extractive-0.1.0`): `ask` only. Such a guest is
//!   never pre-initialized (it would re-read its files through handles of the snapshotted
//!   instance), so each request parses its files in a fresh instance, and several questions
//!   are asked one by one.
//!
//! A swapped-in guest of any of these versions runs without redeploying the host.

use crate::boundary::bound_text;
use std::time::Duration;
use wasmtime::component::{Component, Instance, InstancePre};
use wasmtime::{Engine, Store};

pub(crate) mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "package qa:host-v1; world runner { export qa:extractive/qa@0.1.0; }",
        world: "qa:host-v1/runner",
        exports: { default: async },
    });
}

pub(crate) mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "package qa:host-v2; world runner { export qa:extractive/qa@0.2.0; }",
        world: "qa:host-v2/runner",
        exports: { default: async },
    });
}

pub(crate) mod v3 {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "package qa:host-v3; world runner { export qa:extractive/qa@0.3.0; }",
        world: "qa:host-v3/runner",
        exports: { default: async },
    });
}

use v1::exports::qa::extractive0_1_0::qa as wit1;
use v2::exports::qa::extractive0_2_0::qa as wit2;
use v3::exports::qa::extractive0_3_0::qa as wit3;

/// Which contract a guest exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_1,
    V0_2,
    V0_3,
}

impl Version {
    /// Every version this host runs, newest first, with the export that names it.
    pub const KNOWN: [(Self, &str); 3] =
        [(Self::V0_3, "qa:extractive/qa@0.3.0"), (Self::V0_2, "qa:extractive/qa@0.2.0"), (Self::V0_1, "qa:extractive/qa@0.1.0")];

    /// The newest contract `component` exports, if any.
    pub fn of(engine: &Engine, component: &Component) -> Option<Self> {
        let exports: Vec<String> = component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
        Self::KNOWN.into_iter().find(|(_, name)| exports.iter().any(|e| e == name)).map(|(version, _)| version)
    }

    /// The exports this host knows, for error messages.
    pub fn known_exports() -> String {
        Self::KNOWN.map(|(_, name)| name).join(", ")
    }

    /// Whether a guest of this version can be pre-initialized per model.
    pub fn prepares(self) -> bool {
        self >= Self::V0_2
    }
}

/// How a long context is cut into windows and their answers compared (the WIT `decoding`,
/// the request's `decoding`): one type with the guest's, defaults included.
pub use qa_options::Decoding;

/// Decoding options (the WIT `options` record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub top_k: u32,
    pub max_answer_len: u32,
    pub max_seq_len: u32,
    pub doc_stride: u32,
    pub max_question_len: u32,
    pub handle_impossible: bool,
    /// Windows the call may run, all questions together (0: no limit). Contract 0.1 guests
    /// do not know it; their calls are bounded by the deadline alone.
    pub max_windows: u32,
    /// Contract 0.3 and later; older guests rank as they were built to.
    pub decoding: Decoding,
}

/// One answer, as the guest gives it and the API returns it: `start..end` are character
/// offsets into the context, `text` that slice.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Answer {
    pub text: String,
    pub score: f64,
    pub start: u32,
    pub end: u32,
}

impl Answer {
    /// The first of `answers` (they come best first), or the empty answer when there is none.
    pub fn best(answers: &[Answer]) -> Answer {
        answers.first().cloned().unwrap_or(Answer { text: String::new(), score: 0.0, start: 0, end: 0 })
    }
}

/// Milliseconds per phase of a request, as the API returns them (`timings_ms`): inside the
/// guest's call `tokenize`, `inference` and `decode` (span scoring and answer extraction), which
/// the guest measures; around it `fetch` (making the model available), `guest` (the whole guest
/// call) and `total` (the request end to end), which the host adds ([`PhaseTimings::with_host`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct PhaseTimings {
    pub fetch: f64,
    pub guest: f64,
    pub tokenize: f64,
    pub inference: f64,
    pub decode: f64,
    pub total: f64,
}

impl PhaseTimings {
    /// What the guest measured (in microseconds), before the host's phases are known.
    pub fn inside_guest(tokenize_us: u64, inference_us: u64, decode_us: u64) -> Self {
        let ms = |us: u64| us as f64 / 1e3;
        Self { tokenize: ms(tokenize_us), inference: ms(inference_us), decode: ms(decode_us), ..Self::default() }
    }

    /// These phases in a request that took `total`, of which `fetch` making its model available
    /// and `guest` its guest call.
    pub fn with_host(self, fetch: Duration, guest: Duration, total: Duration) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Self { fetch: ms(fetch), guest: ms(guest), total: ms(total), ..self }
    }
}

/// Phases summed, as over the questions of one call.
impl std::ops::AddAssign<&PhaseTimings> for PhaseTimings {
    fn add_assign(&mut self, other: &PhaseTimings) {
        self.fetch += other.fetch;
        self.guest += other.guest;
        self.tokenize += other.tokenize;
        self.inference += other.inference;
        self.decode += other.decode;
        self.total += other.total;
    }
}

/// A guest's answers to one question, what it measured, and the windows it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub answers: Vec<Answer>,
    pub timings: PhaseTimings,
    pub windows: u32,
}

/// An error of the contract (the WIT `qa-error` variant; 0.1 has the first four).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QaError {
    InvalidInput(String),
    ModelNotFound(String),
    ModelInvalid(String),
    Inference(String),
    InvalidOption(String),
    TooManyWindows(String),
}

impl QaError {
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m)
            | Self::ModelNotFound(m)
            | Self::ModelInvalid(m)
            | Self::Inference(m)
            | Self::InvalidOption(m)
            | Self::TooManyWindows(m) => m,
        }
    }

    fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::InvalidInput(m) => Self::InvalidInput(f(m)),
            Self::ModelNotFound(m) => Self::ModelNotFound(f(m)),
            Self::ModelInvalid(m) => Self::ModelInvalid(f(m)),
            Self::Inference(m) => Self::Inference(f(m)),
            Self::InvalidOption(m) => Self::InvalidOption(f(m)),
            Self::TooManyWindows(m) => Self::TooManyWindows(f(m)),
        }
    }

    /// The message cut to `limit` bytes (on a character boundary) and marked as cut: a guest's
    /// error text is untrusted and goes back to the caller.
    pub fn bounded(self, limit: usize) -> Self {
        self.map_message(|m| bound_text(m, limit))
    }
}

/// What a value lifted out of the guest occupies in the host: charged to the request's
/// account (the lift itself was bounded by the store's hostcall fuel).
pub trait HostBytes {
    fn host_bytes(&self) -> u64;
}

impl HostBytes for Response {
    fn host_bytes(&self) -> u64 {
        let texts: usize = self.answers.iter().map(|a| a.text.len()).sum();
        (size_of::<Self>() + self.answers.len() * size_of::<Answer>() + texts) as u64
    }
}

impl HostBytes for QaError {
    fn host_bytes(&self) -> u64 {
        (size_of::<Self>() + self.message().len()) as u64
    }
}

impl<T: HostBytes, E: HostBytes> HostBytes for Result<T, E> {
    fn host_bytes(&self) -> u64 {
        match self {
            Ok(value) => value.host_bytes(),
            Err(error) => error.host_bytes(),
        }
    }
}

impl<T: HostBytes> HostBytes for Vec<T> {
    fn host_bytes(&self) -> u64 {
        self.iter().map(HostBytes::host_bytes).sum::<u64>() + size_of::<Self>() as u64
    }
}

/// The same conversions for every version's generated types (structurally equal, but for
/// what later versions added: the option `$field`s and the errors after the `$extra`
/// variants).
macro_rules! convert {
    ($wit:ident $(, $field:ident)* ; $($extra:ident),*) => {
        impl From<Options> for $wit::Options {
            fn from(o: Options) -> Self {
                Self {
                    top_k: o.top_k,
                    max_answer_len: o.max_answer_len,
                    max_seq_len: o.max_seq_len,
                    doc_stride: o.doc_stride,
                    max_question_len: o.max_question_len,
                    handle_impossible: o.handle_impossible,
                    $($field: o.$field.into(),)*
                }
            }
        }
        impl From<$wit::Response> for Response {
            fn from(r: $wit::Response) -> Self {
                Self {
                    answers: r.answers.into_iter().map(|a| Answer { text: a.text, score: a.score, start: a.start, end: a.end }).collect(),
                    timings: PhaseTimings::inside_guest(r.timings.tokenize_us, r.timings.inference_us, r.timings.decode_us),
                    windows: r.timings.windows,
                }
            }
        }
        impl From<$wit::QaError> for QaError {
            fn from(e: $wit::QaError) -> Self {
                match e {
                    $wit::QaError::InvalidInput(m) => Self::InvalidInput(m),
                    $wit::QaError::ModelNotFound(m) => Self::ModelNotFound(m),
                    $wit::QaError::ModelInvalid(m) => Self::ModelInvalid(m),
                    $wit::QaError::Inference(m) => Self::Inference(m),
                    $($wit::QaError::$extra(m) => Self::$extra(m),)*
                }
            }
        }
    };
}
convert!(wit1;);
convert!(wit2, max_windows; InvalidOption, TooManyWindows);
convert!(wit3, max_windows, decoding; InvalidOption, TooManyWindows);

impl From<Decoding> for wit3::Decoding {
    fn from(decoding: Decoding) -> Self {
        match decoding {
            Decoding::Document => Self::Document,
            Decoding::Pipeline => Self::Pipeline,
        }
    }
}

/// A component linked for one contract version, ready to instantiate.
pub enum Linked<T: 'static> {
    V0_1(v1::RunnerPre<T>),
    V0_2(v2::RunnerPre<T>),
    V0_3(v3::RunnerPre<T>),
}

impl<T: 'static> Clone for Linked<T> {
    fn clone(&self) -> Self {
        match self {
            Self::V0_1(pre) => Self::V0_1(pre.clone()),
            Self::V0_2(pre) => Self::V0_2(pre.clone()),
            Self::V0_3(pre) => Self::V0_3(pre.clone()),
        }
    }
}

impl<T: Send + 'static> Linked<T> {
    pub fn new(version: Version, pre: InstancePre<T>) -> wasmtime::Result<Self> {
        Ok(match version {
            Version::V0_1 => Self::V0_1(v1::RunnerPre::new(pre)?),
            Version::V0_2 => Self::V0_2(v2::RunnerPre::new(pre)?),
            Version::V0_3 => Self::V0_3(v3::RunnerPre::new(pre)?),
        })
    }

    pub async fn instantiate(&self, store: &mut Store<T>) -> wasmtime::Result<Runner> {
        Ok(match self {
            Self::V0_1(pre) => Runner::V0_1(pre.instantiate_async(store).await?),
            Self::V0_2(pre) => Runner::V0_2(pre.instantiate_async(store).await?),
            Self::V0_3(pre) => Runner::V0_3(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance's exports, whatever its version.
pub enum Runner {
    V0_1(v1::Runner),
    V0_2(v2::Runner),
    V0_3(v3::Runner),
}

type Call<T> = wasmtime::Result<Result<T, QaError>>;

impl Runner {
    /// The exports of an instance made from outside `InstancePre` (the pre-initialization
    /// path instantiates the instrumented component itself).
    pub fn of_instance<T>(version: Version, store: &mut Store<T>, instance: &Instance) -> wasmtime::Result<Self> {
        Ok(match version {
            Version::V0_1 => Self::V0_1(v1::Runner::new(store, instance)?),
            Version::V0_2 => Self::V0_2(v2::Runner::new(store, instance)?),
            Version::V0_3 => Self::V0_3(v3::Runner::new(store, instance)?),
        })
    }

    pub async fn prepare<T: Send>(&self, store: &mut Store<T>, model: &str) -> Call<()> {
        match self {
            Self::V0_1(_) => Ok(Ok(())),
            Self::V0_2(r) => Ok(r.qa_extractive0_2_0_qa().call_prepare(store, model).await?.map_err(QaError::from)),
            Self::V0_3(r) => Ok(r.qa_extractive0_3_0_qa().call_prepare(store, model).await?.map_err(QaError::from)),
        }
    }

    pub async fn ask<T: Send>(&self, store: &mut Store<T>, model: &str, question: &str, context: &str, options: Options) -> Call<Response> {
        Ok(match self {
            Self::V0_1(r) => r
                .qa_extractive0_1_0_qa()
                .call_ask(store, model, question, context, options.into())
                .await?
                .map(Into::into)
                .map_err(Into::into),
            Self::V0_2(r) => r
                .qa_extractive0_2_0_qa()
                .call_ask(store, model, question, context, options.into())
                .await?
                .map(Into::into)
                .map_err(Into::into),
            Self::V0_3(r) => r
                .qa_extractive0_3_0_qa()
                .call_ask(store, model, question, context, options.into())
                .await?
                .map(Into::into)
                .map_err(Into::into),
        })
    }

    /// Several questions over one context: in one call (0.2 and later), or one by one in this same
    /// instance (0.1; the questions belong to one request, so sharing the instance is safe).
    pub async fn ask_many<T: Send>(
        &self,
        store: &mut Store<T>,
        model: &str,
        questions: &[String],
        context: &str,
        options: Options,
    ) -> Call<Vec<Result<Response, QaError>>> {
        match self {
            Self::V0_1(r) => {
                let mut results = Vec::with_capacity(questions.len());
                for question in questions {
                    let result = r.qa_extractive0_1_0_qa().call_ask(&mut *store, model, question, context, options.into()).await?;
                    results.push(result.map(Into::into).map_err(Into::into));
                }
                Ok(Ok(results))
            }
            Self::V0_2(r) => {
                let results = r.qa_extractive0_2_0_qa().call_ask_many(store, model, questions, context, options.into()).await?;
                Ok(results.map(|all| all.into_iter().map(|one| one.map(Into::into).map_err(Into::into)).collect()).map_err(Into::into))
            }
            Self::V0_3(r) => {
                let results = r.qa_extractive0_3_0_qa().call_ask_many(store, model, questions, context, options.into()).await?;
                Ok(results.map(|all| all.into_iter().map(|one| one.map(Into::into).map_err(Into::into)).collect()).map_err(Into::into))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(bound_text("short".into(), 10), "short");
        let cut = bound_text("aé".repeat(10), 4);
        assert!(cut.starts_with("aéa") && cut.ends_with("[cut: 26 more bytes]"), "{cut}");
        let error = QaError::InvalidInput("x".repeat(1 << 20)).bounded(4096);
        assert!(error.message().len() < 4200);
    }
}
