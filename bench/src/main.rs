//! Runner for rows 1-3 of `bench/compare.py` (the protocol is in `bench/README.md`):
//!
//! - `project`: a request body in, the response body out, through `QaService` and the wasm guest;
//! - `native`: the guest's own stages (`qa_guest::pipeline::answer`) compiled natively, with
//!   an `ort` session in place of wasi-nn: row 1 / row 2 is the cost of the sandbox;
//! - `ort`: only `Session::run` on the token tensors the stages would send: the floor.
//!
//! All three build their ONNX Runtime session through the host's `OnnxBackend`, so they run
//! the same session settings.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use ort::session::Session;
use ort::value::Tensor;
use qa_guest::infer::{Logits, QaModel};
use qa_guest::pipeline::{self, MAX_BATCH_ROWS, ModelProfile};
use qa_guest::tokenize::load_tokenizer;
use qa_guest::window::Batch;
use qa_guest::{Decoding, Options, QaError};

/// The transformers pipeline's decoding (its windows and per-window scores), as row 4 runs it;
/// rows 2 and 3 use it, the defaults otherwise (`guest/options/defaults.json`).
const PIPELINE_OPTIONS: Options = Options { decoding: Decoding::Pipeline, ..Options::DEFAULT };
use qa_host::api::QaRequest;
use qa_host::config::HostConfig;
use qa_host::nn::onnx::OnnxBackend;
use qa_host::service::QaService;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RowKind {
    Project,
    Native,
    Ort,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    row: RowKind,
    /// A model directory (`model.onnx`, `tokenizer.json`, `config.json`).
    #[arg(long)]
    model_dir: PathBuf,
    /// JSON list of `{"id","kind","question","context"}`.
    #[arg(long)]
    inputs: PathBuf,
    /// Timed passes over all inputs; 0 stops after the first answer.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// The guest component (row `project` only).
    #[arg(long)]
    guest: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Input {
    id: String,
    question: String,
    context: String,
}

#[derive(Serialize, Clone)]
struct Answer {
    text: String,
    start: u32,
    end: u32,
    score: f64,
}

trait Row {
    /// Answers one input; `None` for the `ort` row, which runs the model and decodes nothing.
    fn answer(&mut self, input: &Input) -> Result<Option<Answer>>;
}

fn main() -> Result<()> {
    let args = Args::parse();
    let inputs: Vec<Input> = serde_json::from_slice(&std::fs::read(&args.inputs).with_context(|| args.inputs.display().to_string())?)
        .context("inputs must be a JSON list of {id, question, context}")?;
    let first = inputs.first().ok_or_else(|| anyhow!("no inputs"))?;
    // Session settings as the host reads them (QA_INFERENCE_THREADS, QA_ORT_ARENA), for every row.
    let settings = HostConfig::from_env()?.session;
    let backend = OnnxBackend { settings };
    let mut row: Box<dyn Row> = match args.row {
        RowKind::Project => Box::new(ProjectRow::start(&args)?),
        RowKind::Native => Box::new(NativeRow::load(&args.model_dir, &backend)?),
        RowKind::Ort => Box::new(OrtRow::load(&args.model_dir, &backend, &inputs)?),
    };

    let answer = row.answer(first)?;
    emit(&serde_json::json!({"event": "first", "answer": answer}))?;
    if args.iters == 0 {
        return Ok(());
    }

    let mut answers = BTreeMap::new();
    for input in &inputs {
        answers.insert(input.id.clone(), row.answer(input)?);
    }
    let mut times: BTreeMap<&str, Vec<f64>> = inputs.iter().map(|i| (i.id.as_str(), Vec::with_capacity(args.iters))).collect();
    for _ in 0..args.iters {
        for input in &inputs {
            let started = Instant::now();
            row.answer(input)?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if let Some(samples) = times.get_mut(input.id.as_str()) {
                samples.push(ms);
            }
        }
    }
    emit(&serde_json::json!({"event": "done", "times_ms": times, "answers": answers}))
}

fn emit(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Row 1: the JSON body a client sends, parsed, answered by the guest, and serialized.
struct ProjectRow {
    runtime: tokio::runtime::Runtime,
    service: Arc<QaService>,
}

impl ProjectRow {
    const MODEL: &'static str = "bench";

    fn start(args: &Args) -> Result<Self> {
        let guest = args.guest.clone().ok_or_else(|| anyhow!("--guest is required for the project row"))?;
        let model_dir = std::path::absolute(&args.model_dir)?;
        // The manifest names the model directory as an image model, as a deployment would.
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("QA_MODELS", format!("{}=image:{}", Self::MODEL, model_dir.display())) };
        let mut config = HostConfig::from_env()?;
        config.guest_wasm = qa_host::guest::GuestLocation::File(guest);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let service = Arc::new(runtime.block_on(qa_host::bootstrap::start(&config))?);
        // Loaded and the guest prepared for it before timing, as `QA_PRELOAD` does.
        runtime.block_on(service.preload(&[Self::MODEL.to_string()])).map_err(|e| anyhow!("{e}"))?;
        Ok(Self { runtime, service })
    }
}

impl Row for ProjectRow {
    fn answer(&mut self, input: &Input) -> Result<Option<Answer>> {
        let body = serde_json::to_vec(&serde_json::json!({
            "model_type": Self::MODEL, "question": input.question, "context": input.context,
            // The pipeline's windows and per-window scores, so that answers compare with row 4 on long
            // inputs too; the decoding costs nothing measurable either way.
            "decoding": "pipeline",
        }))?;
        let request = QaRequest::from_json(&body)?;
        // On a worker thread of the runtime, as `qa-host serve` and the Lambda edge run it.
        let service = self.service.clone();
        let response =
            self.runtime.block_on(self.runtime.spawn(async move { service.answer(request).await }))?.map_err(|e| anyhow!("{e}"))?;
        let response_body = serde_json::to_vec(&response)?;
        std::hint::black_box(&response_body);
        let best = response.body;
        Ok(Some(Answer { text: best.answer, start: best.start, end: best.end, score: best.score }))
    }
}

/// An `ort` session behind the guest's model trait: what the guest does, without wasm.
struct OrtModel {
    session: Session,
    profile: ModelProfile,
}

impl OrtModel {
    fn run(&mut self, batch: &Batch) -> std::result::Result<Logits, String> {
        let shape = [batch.rows as i64, batch.seq_len as i64];
        let tensor = |data: &Vec<i64>| Tensor::from_array((shape, data.clone())).map_err(|e| e.to_string());
        let mut inputs = ort::inputs![
            "input_ids" => tensor(&batch.input_ids)?,
            "attention_mask" => tensor(&batch.attention_mask)?,
        ];
        if self.profile.token_type_ids {
            inputs.push(("token_type_ids".into(), tensor(&batch.token_type_ids)?.into()));
        }
        let outputs = self.session.run(inputs).map_err(|e| e.to_string())?;
        let logits = |name: &str| -> std::result::Result<Vec<f32>, String> {
            let (_, data) = outputs[name].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
            Ok(data.to_vec())
        };
        Ok(Logits { rows: batch.rows, seq_len: batch.seq_len, start: logits("start_logits")?, end: logits("end_logits")? })
    }
}

impl QaModel for OrtModel {
    fn infer(&mut self, batch: &Batch) -> std::result::Result<Logits, QaError> {
        self.run(batch).map_err(QaError::Inference)
    }
}

fn load_model(dir: &Path, backend: &OnnxBackend) -> Result<(qa_guest::tokenize::QaTokenizer, OrtModel)> {
    let tokenizer = load_tokenizer(&std::fs::read(dir.join("tokenizer.json"))?)?;
    let profile = ModelProfile::from_config_json(&std::fs::read(dir.join("config.json"))?)?;
    if profile.f32_inputs {
        bail!("{}: float32-input models are for `wasmtime run`; benchmark the int64 model", dir.display());
    }
    qa_host::nn::init_onnx_runtime(std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).as_deref(), &backend.settings)?;
    let session = backend.session(&dir.join("model.onnx"))?;
    Ok((tokenizer, OrtModel { session, profile }))
}

/// Row 2: the guest's stages, natively.
struct NativeRow {
    tokenizer: qa_guest::tokenize::QaTokenizer,
    model: OrtModel,
}

impl NativeRow {
    fn load(dir: &Path, backend: &OnnxBackend) -> Result<Self> {
        let (tokenizer, model) = load_model(dir, backend)?;
        Ok(Self { tokenizer, model })
    }
}

impl Row for NativeRow {
    fn answer(&mut self, input: &Input) -> Result<Option<Answer>> {
        let profile = self.model.profile;
        let (answers, _) =
            pipeline::answer(&self.tokenizer, &profile, &mut self.model, &input.question, &input.context, &PIPELINE_OPTIONS)?;
        let best = answers.into_iter().next().ok_or_else(|| anyhow!("no answer"))?;
        Ok(Some(Answer { text: best.text, start: best.start as u32, end: best.end as u32, score: best.score }))
    }
}

/// The input tensors of one batch, built once.
struct BatchTensors {
    input_ids: Tensor<i64>,
    attention_mask: Tensor<i64>,
    token_type_ids: Option<Tensor<i64>>,
}

/// Row 3: `Session::run` alone, on the batches the stages build for each input (built once,
/// before timing, as are the tensors).
struct OrtRow {
    model: OrtModel,
    batches: BTreeMap<String, Vec<BatchTensors>>,
}

impl OrtRow {
    fn load(dir: &Path, backend: &OnnxBackend, inputs: &[Input]) -> Result<Self> {
        let (tokenizer, model) = load_model(dir, backend)?;
        let mut batches = BTreeMap::new();
        for input in inputs {
            // Row 2's windows, so the two rows run inference on the same tensors.
            let (_, windows) = pipeline::windows(&tokenizer, &model.profile, &input.question, &input.context, &PIPELINE_OPTIONS)?;
            let mut input_batches = Vec::new();
            for chunk in windows.chunks(MAX_BATCH_ROWS) {
                let batch = Batch::from_windows(&chunk.iter().collect::<Vec<_>>(), model.profile.pad_id);
                let shape = [batch.rows as i64, batch.seq_len as i64];
                let tensor = |data: Vec<i64>| Tensor::from_array((shape, data));
                input_batches.push(BatchTensors {
                    input_ids: tensor(batch.input_ids)?,
                    attention_mask: tensor(batch.attention_mask)?,
                    token_type_ids: if model.profile.token_type_ids { Some(tensor(batch.token_type_ids)?) } else { None },
                });
            }
            batches.insert(input.id.clone(), input_batches);
        }
        Ok(Self { model, batches })
    }
}

impl Row for OrtRow {
    fn answer(&mut self, input: &Input) -> Result<Option<Answer>> {
        let batches = self.batches.get(&input.id).ok_or_else(|| anyhow!("no batches for {}", input.id))?;
        for batch in batches {
            let mut inputs = ort::inputs![
                "input_ids" => &batch.input_ids,
                "attention_mask" => &batch.attention_mask,
            ];
            if let Some(types) = &batch.token_type_ids {
                inputs.push(("token_type_ids".into(), types.into()));
            }
            let outputs = self.model.session.run(inputs)?;
            std::hint::black_box(&outputs);
        }
        Ok(None)
    }
}
