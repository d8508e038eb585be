//! The ONNX Runtime backend (`ort`): a model directory becomes an [`OnnxModel`]. Written for
//! this host because wasmtime-wasi-nn's ONNX backend takes only f32 inputs and panics on
//! others, while BERT-family QA models take int64 ids.
//!
//! Tensors of the types in [`ELEMENTS`] pass both ways; dimensions may be dynamic; inputs and
//! outputs are matched by name. Every mismatch is an error the guest receives through
//! wasi-nn, never a panic in the host. Before ONNX Runtime opens a file, [`model_file`] checks
//! that it references no data outside its own directory.

use super::schedule::{Build, Call, Lane, Pool, Priority};
use super::{Model, NamedTensor, NnError, RunControl, Tensor, TensorType, model_file, optimized};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionOutputs};
use ort::tensor::{PrimitiveTensorElementType, TensorElementType};
use ort::value::{DynValue, Tensor as OrtTensor, ValueType};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// How inference runs: the process's ONNX Runtime thread pool (shared by every session, set
/// once in [`super::init_onnx_runtime`]) and the sessions per model. Each session runs one
/// inference at a time, so `sessions` is how many requests' inference runs on one model at once;
/// all of them share the pool's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionSettings {
    /// Intra-op threads of the shared pool (`QA_INFERENCE_THREADS`); 0 lets ONNX Runtime pick
    /// (one per core).
    pub intra_threads: usize,
    /// Whether the pool's idle threads spin before they sleep (`QA_INFERENCE_SPINNING`).
    pub spinning: bool,
    /// ONNX Runtime's CPU memory arena: buffers kept between runs (faster repeated shapes) at
    /// the cost of resident memory that grows to the largest batch seen.
    pub memory_arena: bool,
    /// Sessions per model (`QA_INFERENCE_CONCURRENCY`), each holding its own copy of the
    /// weights and its own arena.
    pub sessions: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { intra_threads: 0, spinning: true, memory_arena: true, sessions: 1 }
    }
}

/// Turns model directories into [`OnnxModel`]s with the same session settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnnxBackend {
    pub settings: SessionSettings,
}

impl OnnxBackend {
    /// Checks and loads `dir/model.onnx` with one session; it grows to
    /// [`SessionSettings::sessions`] once runs overlap.
    pub fn load_model_dir(&self, dir: &Path) -> Result<Arc<OnnxModel>, NnError> {
        let path = dir.join("model.onnx");
        model_file::check(&path).map_err(|source| NnError::ModelRefused { path: path.clone(), source })?;
        let graph = Graph::of(path);
        let first = self.session_of(&graph)?;
        let path = graph.path.clone();
        OnnxModel::new(first, *self, graph).map(Arc::new).map_err(|reason| NnError::ModelUnloadable { path, reason })
    }

    /// An ONNX Runtime session for `path` with exactly the settings the guest's graphs get
    /// (the native benchmark rows use it, so they measure the same runtime configuration).
    pub fn session(&self, path: &Path) -> Result<Session, NnError> {
        self.session_of(&Graph::of(path.to_path_buf()))
    }

    fn session_of(&self, graph: &Graph) -> Result<Session, NnError> {
        self.commit(&graph.path, self.builder(graph.optimization()))
    }

    /// A session of the shadow lane: one thread of its own (the lane's, at the lowest
    /// priority), never spinning, outside the shared pool.
    fn lane_session(&self, graph: &Graph) -> Result<Session, NnError> {
        let builder = self.builder(graph.optimization()).and_then(|b| {
            b.with_independent_thread_pool()?.with_intra_threads(1)?.with_intra_op_spinning(false)?.with_inter_op_spinning(false)
        });
        self.commit(&graph.path, builder)
    }

    /// Replaces `dir/model.onnx` with ONNX Runtime's optimized graph of it and marks it so
    /// (`qa-host optimize-model`; [`optimized`]): later loads by this release skip optimizing.
    pub fn optimize_model_dir(&self, dir: &Path) -> Result<optimized::Optimized, NnError> {
        let path = dir.join("model.onnx");
        model_file::check(&path).map_err(|source| NnError::ModelRefused { path: path.clone(), source })?;
        let runtime = super::loaded_runtime_version()
            .ok_or_else(|| NnError::ModelUnloadable { path: path.clone(), reason: "the ONNX Runtime release is unknown".into() })?;
        optimized::optimize(dir, runtime, |from, to| {
            let builder = Session::builder()
                .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level2))
                .and_then(|b| b.with_optimized_model_path(to));
            self.commit(from, builder).map(drop)
        })
    }

    fn commit(&self, path: &Path, builder: ort::Result<ort::session::builder::SessionBuilder>) -> Result<Session, NnError> {
        builder.and_then(|b| b.commit_from_file(path)).map_err(|e| {
            // ONNX Runtime's text names host paths: it goes to the log, its code to the reason.
            tracing::warn!(path = %path.display(), error = %e, "ONNX Runtime refused the model");
            NnError::ModelUnloadable { path: path.to_path_buf(), reason: format!("ONNX Runtime refused model.onnx ({:?})", e.code()) }
        })
    }

    fn builder(&self, optimization: GraphOptimizationLevel) -> ort::Result<ort::session::builder::SessionBuilder> {
        let mut builder = Session::builder()?.with_optimization_level(optimization)?;
        // Memory patterns (one block planned per input shape) cost about 36 MiB more peak
        // memory on long documents at the same speed (bench/long_docs.py, measured side by
        // side): off.
        builder = builder.with_memory_pattern(false)?;
        if !self.settings.memory_arena {
            let cpu = ort::execution_providers::CPUExecutionProvider::default().with_arena_allocator(false).build();
            builder = builder.with_execution_providers([cpu])?;
        }
        Ok(builder)
    }
}

/// A model file and how ONNX Runtime treats its graph: optimized at load (every level), or
/// as saved where [`optimized::already_optimized`] holds for it. Decided once per load, so the
/// file is hashed once however many sessions it gets.
#[derive(Clone, Debug)]
struct Graph {
    path: PathBuf,
    as_saved: bool,
}

impl Graph {
    fn of(path: PathBuf) -> Self {
        let runtime = super::loaded_runtime_version().unwrap_or("unknown");
        let as_saved = match optimized::already_optimized(&path, runtime) {
            Ok(_) => {
                tracing::info!(path = %path.display(), runtime, "model graph optimized when packaged: loaded as saved");
                true
            }
            Err(reason) => {
                tracing::debug!(path = %path.display(), %reason, "model graph optimized at load");
                false
            }
        };
        Self { path, as_saved }
    }

    fn optimization(&self) -> GraphOptimizationLevel {
        if self.as_saved { GraphOptimizationLevel::Disable } else { GraphOptimizationLevel::Level3 }
    }
}

/// One element type as wasi-nn, ONNX Runtime and memory see it, with its conversions.
#[derive(Debug)]
struct Element {
    wit: TensorType,
    onnx: TensorElementType,
    size: usize,
    to_value: fn(Vec<i64>, &[u8]) -> ort::Result<DynValue>,
    from_value: fn(&DynValue) -> ort::Result<ShapeAndBytes>,
}

/// A tensor's dimensions and its elements' little-endian bytes.
type ShapeAndBytes = (Vec<i64>, Vec<u8>);

/// Little-endian encoding of one element type.
trait LittleEndian: PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static {
    const SIZE: usize;
    fn read(bytes: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! little_endian {
    ($($t:ty),*) => {$(
        impl LittleEndian for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(bytes: &[u8]) -> Self {
                let mut array = [0u8; std::mem::size_of::<$t>()];
                array.copy_from_slice(bytes);
                <$t>::from_le_bytes(array)
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
little_endian!(f32, f64, i32, i64, u8, half::f16);

fn to_value<T: LittleEndian>(shape: Vec<i64>, bytes: &[u8]) -> ort::Result<DynValue> {
    let values: Vec<T> = bytes.chunks_exact(T::SIZE).map(T::read).collect();
    Ok(OrtTensor::from_array((shape, values))?.into_dyn())
}

fn from_value<T: LittleEndian>(value: &DynValue) -> ort::Result<(Vec<i64>, Vec<u8>)> {
    let (shape, data) = value.try_extract_tensor::<T>()?;
    let mut bytes = Vec::with_capacity(data.len() * T::SIZE);
    data.iter().for_each(|&v| v.write(&mut bytes));
    Ok((shape.to_vec(), bytes))
}

const fn element<T: LittleEndian>(wit: TensorType, onnx: TensorElementType) -> Element {
    Element { wit, onnx, size: T::SIZE, to_value: to_value::<T>, from_value: from_value::<T> }
}

/// Every element type that crosses wasi-nn (bf16 is not offered). A new type is one line here.
const ELEMENTS: [Element; 6] = [
    element::<f32>(TensorType::Fp32, TensorElementType::Float32),
    element::<half::f16>(TensorType::Fp16, TensorElementType::Float16),
    element::<f64>(TensorType::Fp64, TensorElementType::Float64),
    element::<i32>(TensorType::I32, TensorElementType::Int32),
    element::<i64>(TensorType::I64, TensorElementType::Int64),
    element::<u8>(TensorType::U8, TensorElementType::Uint8),
];

fn by_onnx(ty: TensorElementType) -> Option<&'static Element> {
    ELEMENTS.iter().find(|e| e.onnx == ty)
}

/// Name, element type and (possibly dynamic, -1) dimensions of a graph input or output.
#[derive(Clone, Debug)]
struct Port {
    name: String,
    element: &'static Element,
    dims: Vec<i64>,
}

impl Port {
    fn new(name: &str, value_type: &ValueType) -> Result<Self, String> {
        match value_type {
            ValueType::Tensor { ty, shape, .. } => {
                let element = by_onnx(*ty).ok_or_else(|| format!("{name}: element type {ty:?} is not supported"))?;
                Ok(Self { name: name.to_string(), element, dims: shape.to_vec() })
            }
            other => Err(format!("{name}: only tensor inputs and outputs are supported, found {other:?}")),
        }
    }

    /// The guest's tensor as an ONNX Runtime value, after checking type, rank, fixed
    /// dimensions and size.
    fn value(&self, tensor: &Tensor) -> Result<DynValue, String> {
        let element = self.element;
        if tensor.ty != element.wit {
            return Err(format!("input {:?} expects {:?} but got {:?}", self.name, element.wit, tensor.ty));
        }
        if tensor.dimensions.len() != self.dims.len()
            || self.dims.iter().zip(&tensor.dimensions).any(|(&want, &got)| want >= 0 && want != i64::from(got))
        {
            return Err(format!("input {:?} expects shape {:?} but got {:?}", self.name, self.dims, tensor.dimensions));
        }
        let bytes = tensor.elements().checked_mul(element.size as u64);
        if bytes != Some(tensor.data.len() as u64) {
            return Err(format!(
                "input {:?}: {} bytes do not fill a {:?} tensor of {:?}",
                self.name,
                tensor.data.len(),
                tensor.ty,
                tensor.dimensions
            ));
        }
        let shape = tensor.dimensions.iter().map(|&d| i64::from(d)).collect();
        (element.to_value)(shape, &tensor.data).map_err(|e| format!("input {:?}: {e}", self.name))
    }

    /// An output value as a wasi-nn tensor.
    fn tensor(&self, value: &DynValue) -> Result<Tensor, String> {
        let (shape, data) = (self.element.from_value)(value).map_err(|e| format!("output {:?}: {e}", self.name))?;
        let dimensions = shape
            .iter()
            .map(|&d| u32::try_from(d).map_err(|_| format!("output {:?} has dimension {d}", self.name)))
            .collect::<Result<_, _>>()?;
        Ok(Tensor { dimensions, ty: self.element.wit, data })
    }
}

/// A loaded ONNX model: its serving sessions, its shadow lane and its ports. `Session::run`
/// takes `&mut self`, so a run takes a session for itself; runs beyond the number of sessions
/// wait for one, least served call first, aged ([`schedule`](super::schedule)).
pub struct OnnxModel {
    sessions: Arc<Pool<Session>>,
    shadow: Lane<Session>,
    inputs: Vec<Port>,
    outputs: Arc<[Port]>,
}

impl OnnxModel {
    fn new(first: Session, backend: OnnxBackend, graph: Graph) -> Result<Self, String> {
        let inputs = first.inputs.iter().map(|i| Port::new(&i.name, &i.input_type)).collect::<Result<_, _>>()?;
        let outputs = first.outputs.iter().map(|o| Port::new(&o.name, &o.output_type)).collect::<Result<_, _>>()?;
        let more = graph.clone();
        let build: Build<Session> = Arc::new(move || backend.session_of(&more).map_err(|e| e.client_reason()));
        let sessions = Arc::new(Pool::growing(vec![first], backend.settings.sessions, Some(build)));
        // The shadow lane's session is built on its first run: only hosts with a shadow
        // candidate pay for it.
        let shadow = Lane::new("qa-shadow-inference", move || backend.lane_session(&graph).map_err(|e| e.client_reason()));
        Ok(Self { sessions, shadow, inputs, outputs })
    }

    /// The guest's tensors as ONNX Runtime values, checked against the model's inputs.
    fn values(&self, inputs: Vec<NamedTensor>) -> Result<Vec<(String, DynValue)>, String> {
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let port = self.inputs.iter().find(|p| p.name == input.name).ok_or_else(|| {
                let names: Vec<&str> = self.inputs.iter().map(|p| p.name.as_str()).collect();
                format!("the model has no input named {:?} (inputs: {names:?})", input.name)
            })?;
            if values.iter().any(|(name, _)| *name == input.name) {
                return Err(format!("input {:?} was given twice", input.name));
            }
            values.push((input.name.clone(), port.value(&input.tensor)?));
        }
        if let Some(missing) = self.inputs.iter().find(|p| !inputs.iter().any(|i| i.name == p.name)) {
            return Err(format!("input {:?} was not given", missing.name));
        }
        Ok(values)
    }

    /// One run of `call`: on a serving session when its turn comes, or on the shadow lane.
    fn run_call(&self, inputs: Vec<NamedTensor>, run: &RunControl, call: &Arc<Call>) -> Result<Vec<NamedTensor>, String> {
        let values = self.values(inputs)?;
        match call.priority() {
            Priority::Serving => {
                let mut lease = self.sessions.take(call.served_us(), run)?;
                let started = Instant::now();
                let outputs = execute(lease.session()?, values, run).and_then(|outputs| collect(&self.outputs, &outputs));
                call.add(started.elapsed());
                outputs
            }
            Priority::Shadow => {
                let (sessions, ports, run, job_call) = (self.sessions.clone(), self.outputs.clone(), run.clone(), call.clone());
                self.shadow.run(call, move |session| {
                    // Serving calls waiting for a session want every CPU cycle there is.
                    if sessions.waiting() > 0 {
                        job_call.mark_shed();
                        return Err("shadow inference shed: serving requests are waiting for inference".into());
                    }
                    if run.is_terminated() {
                        return Err("the request ended while its inference waited".into());
                    }
                    let started = Instant::now();
                    let outputs = execute(session, values, &run).and_then(|outputs| collect(&ports, &outputs));
                    job_call.add(started.elapsed());
                    tracing::debug!(ms = started.elapsed().as_millis() as u64, ok = outputs.is_ok(), "shadow inference ran");
                    outputs
                })
            }
        }
    }
}

/// One ONNX Runtime run, stoppable through `run`.
fn execute<'s>(session: &'s mut Session, values: Vec<(String, DynValue)>, run: &'s RunControl) -> Result<SessionOutputs<'s>, String> {
    match run.options() {
        Some(options) => session.run_with_options(values, options),
        None => session.run(values),
    }
    .map_err(|e| {
        // The guest (and through it the client) gets ONNX Runtime's error code, the log its text.
        tracing::warn!(error = %e, "ONNX Runtime run failed");
        format!("ONNX Runtime run failed ({:?})", e.code())
    })
}

/// The outputs the model declares, as wasi-nn tensors.
fn collect(ports: &[Port], outputs: &SessionOutputs<'_>) -> Result<Vec<NamedTensor>, String> {
    ports
        .iter()
        .map(|port| {
            let value = outputs.get(port.name.as_str()).ok_or_else(|| format!("output {:?} missing", port.name))?;
            Ok(NamedTensor { name: port.name.clone(), tensor: port.tensor(value)? })
        })
        .collect()
}

impl Model for OnnxModel {
    /// A run outside any call (each its own): it queues as a fresh serving call.
    fn run(&self, inputs: Vec<NamedTensor>, run: &RunControl) -> Result<Vec<NamedTensor>, String> {
        self.run_call(inputs, run, &Call::new(Priority::Serving))
    }

    fn for_call(self: Arc<Self>, call: Arc<Call>) -> Arc<dyn Model> {
        Arc::new(CallModel { model: self, call })
    }
}

/// The model as one guest call's runs reach it.
struct CallModel {
    model: Arc<OnnxModel>,
    call: Arc<Call>,
}

impl Model for CallModel {
    fn run(&self, inputs: Vec<NamedTensor>, run: &RunControl) -> Result<Vec<NamedTensor>, String> {
        self.model.run_call(inputs, run, &self.call)
    }

    fn for_call(self: Arc<Self>, call: Arc<Call>) -> Arc<dyn Model> {
        self.model.clone().for_call(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_type_round_trips_through_its_encoding() {
        fn round_trip<T: LittleEndian + PartialEq>(values: &[T]) {
            let mut bytes = Vec::new();
            values.iter().for_each(|&v| v.write(&mut bytes));
            assert_eq!(bytes.len(), values.len() * T::SIZE);
            let back: Vec<T> = bytes.chunks_exact(T::SIZE).map(T::read).collect();
            assert_eq!(back, values);
        }
        round_trip(&[1i64, -2, i64::MAX]);
        round_trip(&[0.5f32, -3.0]);
        round_trip(&[half::f16::from_f32(0.5), half::f16::from_f32(-3.0)]);
        round_trip(&[7u8, 255]);
    }

    #[test]
    fn the_element_table_has_one_row_per_type() {
        for (i, a) in ELEMENTS.iter().enumerate() {
            for b in &ELEMENTS[i + 1..] {
                assert!(a.wit != b.wit && a.onnx != b.onnx, "{:?} twice", a.wit);
            }
            assert!(by_onnx(a.onnx).is_some_and(|e| e.wit == a.wit));
        }
        assert!(by_onnx(TensorElementType::String).is_none());
    }
}
