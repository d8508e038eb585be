//! Thin binding layer: WIT types ⇄ library types, the wasi-nn model, the prepared models and
//! the fixture runner. No QA logic lives here.

use qa_guest::pipeline::{self, ModelProfile};
use qa_guest::tokenize::QaTokenizer;
use qa_guest::tokenize::load_tokenizer;
use qa_guest::{Decoding, Options, QaError};
use std::cell::RefCell;
use std::collections::HashMap;

wit_bindgen::generate!({
    world: "guest",
    path: "../wit",
    generate_all,
});

use exports::qa::extractive0_3_0::qa as wit;
use wasi::nn::{graph, tensor};

// The model behind `wasi:nn`, shared with the contract-0.1.0 build of this guest in
// `guest/fixtures`.
mod wasi_nn_model;
use wasi_nn_model::{MODELS_ROOT, WasiNnModel, run_fixture_with, to_u32};

struct Component;
export!(Component);

impl wit::Guest for Component {
    fn prepare(model: String) -> Result<(), wit::QaError> {
        let prepared = MODELS
            .with_borrow_mut(|models| {
                let loaded = load_files(models, &model)?;
                // Tokenize once, so what the tokenizer builds lazily on first use is built
                // here, in the snapshot, instead of in every request.
                qa_guest::tokenize::encode_windows(&loaded.tokenizer, "What is warm?", "The guest is warm.", &Options::default()).map(drop)
            })
            .map_err(to_wit_error);
        // wasi-libc caches the preopened directories' handles on first use; those handles
        // belong to the instance being snapshotted, so forget them (a later file access
        // asks the new instance for its own).
        unsafe extern "C" {
            fn __wasilibc_reset_preopens();
        }
        // SAFETY: no file or directory stream is open here; wasi-libc re-enumerates the
        // preopens lazily on the next path lookup.
        unsafe { __wasilibc_reset_preopens() };
        // Requests allocate above all this (see `heap`), so the pages they write are few runs.
        crate::HEAP.start_requests();
        prepared
    }

    fn ask(model: String, question: String, context: String, opts: wit::Options) -> Result<wit::Response, wit::QaError> {
        let (answers, timings) = answer(&model, &question, &context, &options(opts)).map_err(to_wit_error)?;
        Ok(to_wit_response(answers, timings))
    }

    fn ask_many(
        model: String,
        questions: Vec<String>,
        context: String,
        opts: wit::Options,
    ) -> Result<Vec<Result<wit::Response, wit::QaError>>, wit::QaError> {
        let results = answer_many(&model, &questions, &context, &options(opts)).map_err(to_wit_error)?;
        Ok(results
            .into_iter()
            .map(|result| result.map(|(answers, timings)| to_wit_response(answers, timings)).map_err(to_wit_error))
            .collect())
    }
}

fn options(opts: wit::Options) -> Options {
    Options {
        top_k: opts.top_k as usize,
        max_answer_len: opts.max_answer_len as usize,
        max_seq_len: opts.max_seq_len as usize,
        doc_stride: opts.doc_stride as usize,
        max_question_len: opts.max_question_len as usize,
        handle_impossible: opts.handle_impossible,
        max_windows: opts.max_windows as usize,
        decoding: match opts.decoding {
            wit::Decoding::Document => Decoding::Document,
            wit::Decoding::Pipeline => Decoding::Pipeline,
        },
    }
}

fn to_wit_response(answers: Vec<qa_guest::Answer>, timings: qa_guest::Timings) -> wit::Response {
    wit::Response {
        answers: answers
            .into_iter()
            .map(|a| wit::Answer { text: a.text, score: a.score, start: to_u32(a.start), end: to_u32(a.end) })
            .collect(),
        timings: wit::Timings {
            tokenize_us: timings.tokenize_us,
            inference_us: timings.inference_us,
            decode_us: timings.decode_us,
            windows: timings.windows,
        },
    }
}

fn to_wit_error(e: QaError) -> wit::QaError {
    match e {
        QaError::InvalidInput(m) => wit::QaError::InvalidInput(m),
        QaError::InvalidOption(m) => wit::QaError::InvalidOption(m),
        QaError::TooManyWindows(m) => wit::QaError::TooManyWindows(m),
        QaError::ModelNotFound(m) => wit::QaError::ModelNotFound(m),
        QaError::ModelInvalid(m) => wit::QaError::ModelInvalid(m),
        QaError::Inference(m) => wit::QaError::Inference(m),
    }
}

/// A model's parsed files. The host runs each request in a fresh instance started from the
/// snapshot `prepare` made, so these are parsed once per model, not per request.
struct Loaded {
    tokenizer: QaTokenizer,
    profile: ModelProfile,
}

thread_local! {
    static MODELS: RefCell<HashMap<String, Loaded>> = RefCell::new(HashMap::new());
}

use qa_guest::Answered;

fn answer(model: &str, question: &str, context: &str, options: &Options) -> Result<Answered, QaError> {
    with_model(model, |loaded, nn| pipeline::answer(&loaded.tokenizer, &loaded.profile, nn, question, context, options))
}

fn answer_many(model: &str, questions: &[String], context: &str, options: &Options) -> Result<Vec<Result<Answered, QaError>>, QaError> {
    let questions: Vec<&str> = questions.iter().map(String::as_str).collect();
    with_model(model, |loaded, nn| pipeline::answer_many(&loaded.tokenizer, &loaded.profile, nn, &questions, context, options))
}

/// Runs `f` with the model's parsed files and its graph.
fn with_model<T>(model: &str, f: impl FnOnce(&mut Loaded, &mut WasiNnModel) -> Result<T, QaError>) -> Result<T, QaError> {
    let graph = graph::load_by_name(model).map_err(|e| QaError::ModelNotFound(format!("graph {model:?}: {}", e.data())))?;
    MODELS.with_borrow_mut(|models| {
        let loaded = load_files(models, model)?;
        let mut nn = WasiNnModel { graph, profile: loaded.profile };
        f(loaded, &mut nn)
    })
}

fn load_files<'m>(models: &'m mut HashMap<String, Loaded>, model: &str) -> Result<&'m mut Loaded, QaError> {
    if model.is_empty() || model.contains(['/', '\\']) || model == "." || model == ".." {
        return Err(QaError::InvalidInput(format!("model name {model:?} is not a plain name")));
    }
    if !models.contains_key(model) {
        let dir = format!("{MODELS_ROOT}/{model}");
        let read = |name: &str| {
            let path = format!("{dir}/{name}");
            std::fs::read(&path).map_err(|e| QaError::ModelNotFound(format!("{path}: {e}")))
        };
        let tokenizer = load_tokenizer(&read("tokenizer.json")?)?;
        let profile = ModelProfile::from_config_json(&read("config.json")?)?;
        models.insert(model.to_string(), Loaded { tokenizer, profile });
    }
    models.get_mut(model).ok_or_else(|| QaError::ModelNotFound(model.to_string()))
}

/// `wasmtime run` entry: a fixture on stdin ([`qa_guest::fixture`]), the answers on stdout;
/// the exit code says whether every expected answer matched (2: the run failed).
pub fn run_fixture() -> i32 {
    run_fixture_with(answer_many)
}
