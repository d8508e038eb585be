//! Thin binding layer: WIT types ⇄ library types, the wasi-nn model, the prepared models and
//! the fixture runner. No QA logic lives here.

use qa_guest::infer::{Logits, QaModel};
use qa_guest::pipeline::{self, ModelProfile};
use qa_guest::tokenize::load_tokenizer;
use qa_guest::window::Batch;
use qa_guest::{Options, QaError};
use std::cell::RefCell;
use std::collections::HashMap;
use tokenizers::Tokenizer;

wit_bindgen::generate!({
    world: "guest",
    path: "../wit",
    generate_all,
});

use exports::qa::extractive0_2_0::qa as wit;
use wasi::nn::{graph, tensor};

/// Where the host (or `wasmtime run --dir models::/models`) mounts the model directories.
const MODELS_ROOT: &str = "/models";

struct Component;
export!(Component);

impl wit::Guest for Component {
    fn prepare(model: String) -> Result<(), wit::QaError> {
        let prepared = MODELS
            .with_borrow_mut(|models| {
                let loaded = load_files(models, &model)?;
                // Tokenize once, so what the tokenizer builds lazily on first use is built
                // here, in the snapshot, instead of in every request.
                qa_guest::tokenize::encode_windows(&mut loaded.tokenizer, "What is warm?", "The guest is warm.", &Options::default())
                    .map(drop)
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

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
    tokenizer: Tokenizer,
    profile: ModelProfile,
}

thread_local! {
    static MODELS: RefCell<HashMap<String, Loaded>> = RefCell::new(HashMap::new());
}

type Answered = (Vec<qa_guest::Answer>, qa_guest::Timings);

fn answer(model: &str, question: &str, context: &str, options: &Options) -> Result<Answered, QaError> {
    with_model(model, |loaded, nn| pipeline::answer(&mut loaded.tokenizer, &loaded.profile, nn, question, context, options))
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

/// The model behind `wasi:nn`: int64 `input_ids`, `attention_mask` (and `token_type_ids`
/// when the model takes them) in, `start_logits` and `end_logits` out. Models marked as taking
/// float32 ids get the same values as f32 (exact for ids below 2^24).
struct WasiNnModel {
    graph: graph::Graph,
    profile: ModelProfile,
}

impl QaModel for WasiNnModel {
    fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
        let dims = [to_u32(batch.rows), to_u32(batch.seq_len)];
        let f32_inputs = self.profile.f32_inputs;
        let id_tensor = |values: &[i64]| {
            if f32_inputs {
                let bytes: Vec<u8> = values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
                tensor::Tensor::new(&dims.to_vec(), tensor::TensorType::Fp32, &bytes)
            } else {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensor::Tensor::new(&dims.to_vec(), tensor::TensorType::I64, &bytes)
            }
        };
        let mut inputs =
            vec![("input_ids".to_string(), id_tensor(&batch.input_ids)), ("attention_mask".to_string(), id_tensor(&batch.attention_mask))];
        if self.profile.token_type_ids {
            inputs.push(("token_type_ids".to_string(), id_tensor(&batch.token_type_ids)));
        }
        let context =
            self.graph.init_execution_context().map_err(|e| QaError::Inference(format!("init execution context: {}", e.data())))?;
        let outputs = context.compute(inputs).map_err(|e| QaError::Inference(e.data()))?;
        let mut start = None;
        let mut end = None;
        for (name, tensor) in outputs {
            match name.as_str() {
                "start_logits" => start = Some(read_f32(&tensor)?),
                "end_logits" => end = Some(read_f32(&tensor)?),
                _ => {}
            }
        }
        let missing = |name: &str| QaError::Inference(format!("the model has no output named {name:?}"));
        let (start_dims, start) = start.ok_or_else(|| missing("start_logits"))?;
        let (_, end) = end.ok_or_else(|| missing("end_logits"))?;
        let (rows, seq_len) = match start_dims.as_slice() {
            [rows, seq_len] => (*rows as usize, *seq_len as usize),
            other => return Err(QaError::Inference(format!("start_logits has shape {other:?}, expected [batch, sequence]"))),
        };
        Ok(Logits { rows, seq_len, start, end })
    }
}

fn read_f32(tensor: &tensor::Tensor) -> Result<(Vec<u32>, Vec<f32>), QaError> {
    let data = tensor.data();
    let values = match tensor.ty() {
        tensor::TensorType::Fp32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        other => return Err(QaError::Inference(format!("logits are {other:?}, expected FP32"))),
    };
    Ok((tensor.dimensions(), values))
}

/// `wasmtime run` entry: a JSON fixture on stdin, the answers as JSON on stdout.
///
/// Fixture: `{"question", "context", "model_type"?, "top_k"?, "expected"?}`. Without
/// `model_type`, the first directory under `/models` whose graph the runtime has loaded is
/// used. With `expected`, the exit code says whether the best answer matched it.
pub fn run_fixture() -> i32 {
    match fixture() {
        Ok(matched) => i32::from(!matched),
        Err(message) => {
            eprintln!("qa-guest: {message}");
            2
        }
    }
}

fn fixture() -> Result<bool, String> {
    let input = std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?;
    let fixture: serde_json::Value = serde_json::from_str(&input).map_err(|e| format!("fixture is not JSON: {e}"))?;
    let text = |key: &str| fixture.get(key).and_then(serde_json::Value::as_str);
    let question = text("question").ok_or("fixture needs a \"question\" string")?;
    let context = text("context").ok_or("fixture needs a \"context\" string")?;
    let model = match text("model_type") {
        Some(m) => m.to_string(),
        None => preloaded_model()?,
    };
    let mut options = Options::default();
    if let Some(k) = fixture.get("top_k").and_then(serde_json::Value::as_u64) {
        options.top_k = usize::try_from(k).map_err(|_| "top_k is out of range")?;
    }
    let (answers, timings) = answer(&model, question, context, &options).map_err(|e| e.to_string())?;
    let best = answers.first().map(|a| a.text.as_str());
    let expected = text("expected");
    let matched = expected.is_none_or(|e| Some(e) == best);
    let output = serde_json::json!({
        "model_type": model,
        "answer": best,
        "answers": answers.iter().map(|a| serde_json::json!({"text": a.text, "score": a.score, "start": a.start, "end": a.end})).collect::<Vec<_>>(),
        "expected": expected,
        "matches_expected": expected.map(|_| matched),
        "timings_us": {"tokenize": timings.tokenize_us, "inference": timings.inference_us, "decode": timings.decode_us},
        "windows": timings.windows,
    });
    println!("{output:#}");
    Ok(matched)
}

fn preloaded_model() -> Result<String, String> {
    let mut names: Vec<String> = std::fs::read_dir(MODELS_ROOT)
        .map_err(|e| format!("{MODELS_ROOT}: {e} (mount the models with --dir models::/models)"))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().find(|name| graph::load_by_name(name).is_ok()).ok_or_else(|| {
        format!("no directory under {MODELS_ROOT} names a graph the runtime preloaded (use -S nn-graph=onnx::models/<name>)")
    })
}
