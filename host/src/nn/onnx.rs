//! A wasi-nn backend over ONNX Runtime (`ort`), used instead of upstream's because upstream's
//! takes only f32 inputs and panics on others, while BERT-family QA models take int64 ids.
//!
//! Tensors of type f32, f16, f64, i32, i64 and u8 pass both ways; dimensions may be dynamic;
//! inputs and outputs are matched by name. Every mismatch is an error the guest receives
//! through wasi-nn, never a panic in the host.

use std::path::Path;
use std::sync::{Arc, Mutex};
use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, BackendFromDir, BackendGraph, BackendInner, Id, NamedTensor};
use wasmtime_wasi_nn::wit::{ExecutionTarget, GraphEncoding, TensorType};
use wasmtime_wasi_nn::{ExecutionContext, Graph, Tensor};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::tensor::TensorElementType;
use ort::value::{DynValue, Tensor as OrtTensor, ValueType};

use super::NnError;

/// How sessions are built. One ONNX Runtime session per model, shared by all requests.
#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    /// Intra-op threads; 0 lets ONNX Runtime pick (one per core).
    pub intra_threads: usize,
    /// ONNX Runtime's CPU memory arena and memory patterns: buffers kept between runs (faster
    /// repeated shapes) at the cost of resident memory that grows to the largest batch seen.
    pub memory_arena: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { intra_threads: 0, memory_arena: true }
    }
}

/// Loads ONNX graphs. The guest gets no backend (it can only load graphs by name); the host
/// uses this directly to turn a model directory into a [`Graph`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OnnxBackend {
    pub settings: SessionSettings,
}

impl OnnxBackend {
    /// Builds a session from `dir/model.onnx`.
    pub fn load_model_dir(&self, dir: &Path) -> Result<Graph, NnError> {
        let path = dir.join("model.onnx");
        let session = self.session(&path)?;
        OnnxGraph::new(session).map_err(|reason| NnError::ModelUnloadable { path, reason })
    }

    /// An ONNX Runtime session for `path` with exactly the settings the guest's graphs get
    /// (the native benchmark rows use it, so they measure the same runtime configuration).
    pub fn session(&self, path: &Path) -> Result<Session, NnError> {
        self.builder()
            .and_then(|b| b.commit_from_file(path))
            .map_err(|e| NnError::ModelUnloadable { path: path.to_path_buf(), reason: e.to_string() })
    }

    fn builder(&self) -> ort::Result<ort::session::builder::SessionBuilder> {
        let mut builder = Session::builder()?.with_optimization_level(GraphOptimizationLevel::Level3)?;
        if self.settings.intra_threads > 0 {
            builder = builder.with_intra_threads(self.settings.intra_threads)?;
        }
        if !self.settings.memory_arena {
            let cpu = ort::execution_providers::CPUExecutionProvider::default().with_arena_allocator(false).build();
            builder = builder.with_memory_pattern(false)?.with_execution_providers([cpu])?;
        }
        Ok(builder)
    }
}

impl BackendInner for OnnxBackend {
    fn encoding(&self) -> GraphEncoding {
        GraphEncoding::Onnx
    }

    fn load(&mut self, builders: &[&[u8]], _target: ExecutionTarget) -> Result<Graph, BackendError> {
        let [bytes] = builders else {
            return Err(BackendError::InvalidNumberOfBuilders(1, builders.len()));
        };
        let session = self.builder().and_then(|b| b.commit_from_memory(bytes)).map_err(access)?;
        OnnxGraph::new(session).map_err(access)
    }

    fn as_dir_loadable(&mut self) -> Option<&mut dyn BackendFromDir> {
        Some(self)
    }
}

impl BackendFromDir for OnnxBackend {
    fn load_from_dir(&mut self, dir: &Path, _target: ExecutionTarget) -> Result<Graph, BackendError> {
        self.load_model_dir(dir).map_err(access)
    }
}

fn access(e: impl std::fmt::Display) -> BackendError {
    let detail = e.to_string();
    super::record_backend_error(&detail);
    BackendError::BackendAccess(wasmtime::format_err!("{detail}"))
}

/// Name, element type and (possibly dynamic, -1) dimensions of a graph input or output.
#[derive(Clone, Debug)]
struct Port {
    name: String,
    ty: TensorElementType,
    dims: Vec<i64>,
}

impl Port {
    fn new(name: &str, value_type: &ValueType) -> Result<Self, String> {
        match value_type {
            ValueType::Tensor { ty, shape, .. } => Ok(Self { name: name.to_string(), ty: *ty, dims: shape.to_vec() }),
            other => Err(format!("{name}: only tensor inputs and outputs are supported, found {other:?}")),
        }
    }
}

struct GraphInner {
    session: Mutex<Session>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
}

struct OnnxGraph(Arc<GraphInner>);

impl OnnxGraph {
    fn new(session: Session) -> Result<Graph, String> {
        let inputs = session.inputs.iter().map(|i| Port::new(&i.name, &i.input_type)).collect::<Result<_, _>>()?;
        let outputs = session.outputs.iter().map(|o| Port::new(&o.name, &o.output_type)).collect::<Result<_, _>>()?;
        let graph: Box<dyn BackendGraph> = Box::new(OnnxGraph(Arc::new(GraphInner { session: Mutex::new(session), inputs, outputs })));
        Ok(graph.into())
    }
}

impl BackendGraph for OnnxGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let context: Box<dyn BackendExecutionContext> =
            Box::new(OnnxContext { graph: self.0.clone(), staged: Vec::new(), results: Vec::new() });
        Ok(context.into())
    }
}

struct OnnxContext {
    graph: Arc<GraphInner>,
    /// Inputs given one by one through the WITX-style `set_input`.
    staged: Vec<NamedTensor>,
    /// Outputs of the last `compute`, for `get_output`.
    results: Vec<NamedTensor>,
}

impl OnnxContext {
    fn port_name(ports: &[Port], id: &Id) -> Result<String, BackendError> {
        match id {
            Id::Name(name) => Ok(name.clone()),
            Id::Index(i) => ports
                .get(*i as usize)
                .map(|p| p.name.clone())
                .ok_or_else(|| access(format!("tensor index {i} is out of range (the graph has {})", ports.len()))),
        }
    }

    fn run(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, BackendError> {
        let graph = &self.graph;
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let port = graph.inputs.iter().find(|p| p.name == input.name).ok_or_else(|| {
                let names: Vec<&str> = graph.inputs.iter().map(|p| p.name.as_str()).collect();
                access(format!("the model has no input named {:?} (inputs: {names:?})", input.name))
            })?;
            values.push((input.name.clone(), to_ort(port, &input.tensor)?));
        }
        if let Some(missing) = graph.inputs.iter().find(|p| !inputs.iter().any(|i| i.name == p.name)) {
            return Err(access(format!("input {:?} was not given", missing.name)));
        }
        let mut session = graph.session.lock().map_err(|_| access("the model's session was poisoned by an earlier failure"))?;
        let outputs = session.run(values).map_err(access)?;
        graph
            .outputs
            .iter()
            .map(|port| {
                let value = outputs.get(port.name.as_str()).ok_or_else(|| access(format!("output {:?} missing", port.name)))?;
                Ok(NamedTensor { name: port.name.clone(), tensor: from_ort(value)? })
            })
            .collect()
    }
}

impl BackendExecutionContext for OnnxContext {
    fn set_input(&mut self, id: Id, tensor: &Tensor) -> Result<(), BackendError> {
        let name = Self::port_name(&self.graph.inputs, &id)?;
        self.staged.retain(|t| t.name != name);
        self.staged.push(NamedTensor { name, tensor: tensor.clone() });
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<Tensor, BackendError> {
        let name = Self::port_name(&self.graph.outputs, &id)?;
        self.results
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.tensor.clone())
            .ok_or_else(|| access(format!("no output {name:?}; has `compute` been called?")))
    }

    fn compute(&mut self, inputs: Option<Vec<NamedTensor>>) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        match inputs {
            Some(inputs) => self.run(&inputs).map(Some),
            None => {
                self.results = self.run(&self.staged)?;
                Ok(None)
            }
        }
    }
}

fn element_size(ty: TensorType) -> usize {
    match ty {
        TensorType::U8 => 1,
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
    }
}

fn wit_type(ty: TensorElementType) -> Option<TensorType> {
    Some(match ty {
        TensorElementType::Float32 => TensorType::Fp32,
        TensorElementType::Float16 => TensorType::Fp16,
        TensorElementType::Float64 => TensorType::Fp64,
        TensorElementType::Int32 => TensorType::I32,
        TensorElementType::Int64 => TensorType::I64,
        TensorElementType::Uint8 => TensorType::U8,
        _ => return None,
    })
}

/// Guest tensor → ONNX Runtime value, after checking type, rank, fixed dimensions and size.
fn to_ort(port: &Port, tensor: &Tensor) -> Result<DynValue, BackendError> {
    let expected = wit_type(port.ty).ok_or_else(|| access(format!("input {:?} has unsupported type {:?}", port.name, port.ty)))?;
    if tensor.ty != expected {
        return Err(access(format!("input {:?} expects {expected:?} but got {:?}", port.name, tensor.ty)));
    }
    if tensor.dimensions.len() != port.dims.len()
        || port.dims.iter().zip(&tensor.dimensions).any(|(&want, &got)| want >= 0 && want != i64::from(got))
    {
        return Err(access(format!("input {:?} expects shape {:?} but got {:?}", port.name, port.dims, tensor.dimensions)));
    }
    let shape: Vec<i64> = tensor.dimensions.iter().map(|&d| i64::from(d)).collect();
    let count = tensor.dimensions.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d as usize));
    if count.and_then(|c| c.checked_mul(element_size(tensor.ty))) != Some(tensor.data.len()) {
        return Err(access(format!(
            "input {:?}: {} bytes do not fill a {:?} tensor of {:?}",
            port.name,
            tensor.data.len(),
            tensor.ty,
            tensor.dimensions
        )));
    }
    let data = &tensor.data;
    let value: DynValue = match tensor.ty {
        TensorType::Fp32 => OrtTensor::from_array((shape, decode(data, f32::from_le_bytes))).map_err(access)?.into_dyn(),
        TensorType::Fp64 => OrtTensor::from_array((shape, decode(data, f64::from_le_bytes))).map_err(access)?.into_dyn(),
        TensorType::Fp16 => {
            OrtTensor::from_array((shape, decode(data, |b: [u8; 2]| half::f16::from_le_bytes(b)))).map_err(access)?.into_dyn()
        }
        TensorType::I32 => OrtTensor::from_array((shape, decode(data, i32::from_le_bytes))).map_err(access)?.into_dyn(),
        TensorType::I64 => OrtTensor::from_array((shape, decode(data, i64::from_le_bytes))).map_err(access)?.into_dyn(),
        TensorType::U8 => OrtTensor::from_array((shape, data.clone())).map_err(access)?.into_dyn(),
        TensorType::Bf16 => return Err(access("bf16 tensors are not supported")),
    };
    Ok(value)
}

/// ONNX Runtime output → guest tensor (little-endian bytes).
fn from_ort(value: &DynValue) -> Result<Tensor, BackendError> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(access("the model returned a non-tensor output"));
    };
    fn pack<T: ort::tensor::PrimitiveTensorElementType + Copy, const N: usize>(
        value: &DynValue,
        to_bytes: fn(T) -> [u8; N],
    ) -> Result<(Vec<u32>, Vec<u8>), BackendError> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(access)?;
        let dims = shape
            .iter()
            .map(|&d| u32::try_from(d).map_err(|_| access(format!("output dimension {d} does not fit u32"))))
            .collect::<Result<_, _>>()?;
        Ok((dims, data.iter().flat_map(|&v| to_bytes(v)).collect()))
    }
    let (dims, data) = match ty {
        TensorElementType::Float32 => pack(value, f32::to_le_bytes)?,
        TensorElementType::Float16 => pack(value, half::f16::to_le_bytes)?,
        TensorElementType::Float64 => pack(value, f64::to_le_bytes)?,
        TensorElementType::Int32 => pack(value, i32::to_le_bytes)?,
        TensorElementType::Int64 => pack(value, i64::to_le_bytes)?,
        TensorElementType::Uint8 => pack(value, |v: u8| [v])?,
        other => return Err(access(format!("output type {other:?} is not supported"))),
    };
    let ty = wit_type(*ty).ok_or_else(|| access("unsupported output type"))?;
    Ok(Tensor::new(dims, ty, data))
}

fn decode<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut array = [0u8; N];
            array.copy_from_slice(chunk);
            from(array)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_endian_decoding_round_trips() {
        let values = [1i64, -2, i64::MAX];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode(&bytes, i64::from_le_bytes), values);
        let halves = [half::f16::from_f32(0.5), half::f16::from_f32(-3.0)];
        let bytes: Vec<u8> = halves.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode(&bytes, |b: [u8; 2]| half::f16::from_le_bytes(b)), halves);
    }

    #[test]
    fn every_wit_type_but_bf16_maps_to_an_onnx_type() {
        for ty in [
            TensorElementType::Float32,
            TensorElementType::Float16,
            TensorElementType::Float64,
            TensorElementType::Int32,
            TensorElementType::Int64,
            TensorElementType::Uint8,
        ] {
            let wit = wit_type(ty).unwrap();
            assert!(element_size(wit) >= 1);
        }
        assert!(wit_type(TensorElementType::String).is_none());
    }
}
