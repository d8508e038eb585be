//! The model behind `wasi:nn` and the fixture runner, on the `wasi:nn` bindings (`graph`,
//! `tensor`) of the module that declares this one: `component.rs`, and the contract-0.1.0
//! guest of `guest/fixtures` (its own bindings of the same `wasi:nn`), so what stands on them
//! is written once.

use super::{graph, tensor};
use qa_guest::infer::{Logits, QaModel};
use qa_guest::pipeline::ModelProfile;
use qa_guest::window::Batch;
use qa_guest::{Options, QaError};

/// A count as WIT's `u32`, saturating (counts here are far below it).
pub(crate) fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Where the host (or `wasmtime run --dir models::/models`) mounts the model directories.
pub(crate) const MODELS_ROOT: &str = "/models";

/// Runs the fixture on stdin with `answer_many` (model, questions, context, options) and
/// prints the report; the exit code: 0 every expectation held, 1 one did not, 2 the run
/// failed.
pub(crate) fn run_fixture_with(
    answer_many: impl FnOnce(&str, &[String], &str, &Options) -> Result<Vec<qa_guest::fixture::Outcome>, QaError>,
) -> i32 {
    let run = || -> Result<bool, String> {
        let input = std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?;
        let fixture = qa_guest::fixture::parse(&input)?;
        let model = match &fixture.model_type {
            Some(model) => model.clone(),
            None => preloaded_model()?,
        };
        let outcomes = answer_many(&model, &fixture.questions, &fixture.context, &fixture.options).map_err(|e| e.to_string())?;
        let (output, matched) = qa_guest::fixture::report(&fixture, &model, &outcomes);
        println!("{output:#}");
        Ok(matched)
    };
    match run() {
        Ok(matched) => i32::from(!matched),
        Err(message) => {
            eprintln!("qa-guest: {message}");
            2
        }
    }
}

/// The first directory under [`MODELS_ROOT`] whose graph the runtime preloaded.
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

/// The model behind `wasi:nn`: int64 `input_ids`, `attention_mask` (and `token_type_ids`
/// when the model takes them) in, `start_logits` and `end_logits` out. Models marked as taking
/// float32 ids get the same values as f32 (exact for ids below 2^24).
pub(crate) struct WasiNnModel {
    pub(crate) graph: graph::Graph,
    pub(crate) profile: ModelProfile,
}

impl QaModel for WasiNnModel {
    fn infer(&mut self, batch: &Batch) -> Result<Logits, QaError> {
        let dims = [to_u32(batch.rows), to_u32(batch.seq_len)];
        let f32_inputs = self.profile.f32_inputs;
        let id_tensor = |values: &[i64]| {
            if f32_inputs {
                let bytes: Vec<u8> = values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
                tensor::Tensor::new(&dims, tensor::TensorType::Fp32, &bytes)
            } else {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensor::Tensor::new(&dims, tensor::TensorType::I64, &bytes)
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
