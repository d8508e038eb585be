//! The `wasi:nn@0.2.0-rc-2024-10-28` imports a guest sees, bounded.
//!
//! The host implements the WIT itself rather than with wasmtime-wasi-nn's binding because
//! that binding is synchronous (a `compute` blocks the thread that runs the guest, beyond its
//! deadline) and has no place to bound what a guest makes the host hold. Here:
//! - `load-by-name` finds only the graph of the request's model; `load` from bytes is refused;
//! - tensors the guest creates count against a per-request budget of bytes and of live
//!   tensors, and a `compute` whose inputs exceed the element budget is refused before it
//!   starts ([`NnLimits`]);
//! - `compute` runs off the async executor and is stopped when the request ends: dropping the
//!   store (the deadline passed, the client left) terminates the run ([`RunControl`]);
//! - a backend failure reaches the guest as a `runtime-error` with its detail, and the host
//!   reads the last detail back from [`NnState::last_failure`] for its error report.

pub use super::Tensor;
use super::{Model, NamedTensor, RunControl};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod generated {
    wasmtime::component::bindgen!({
        world: "ml",
        path: "../wit/deps/wasi-nn",
        with: {
            "wasi:nn/graph.graph": super::GraphHandle,
            "wasi:nn/tensor.tensor": super::Tensor,
            "wasi:nn/inference.graph-execution-context": super::ContextHandle,
            "wasi:nn/errors.error": super::NnFailure,
        },
        imports: {
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
            default: trappable,
        },
    });
}

pub use generated::wasi::nn::tensor::TensorType;
use generated::wasi::nn::{errors, graph, inference, tensor};

/// What one request's guest may make the host hold through wasi-nn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NnLimits {
    /// Elements of any one `compute` input (rows × sequence for token ids). The shipped
    /// guest sends at most `MAX_BATCH_ROWS` windows of at most 512 tokens per call.
    pub max_input_elements: u64,
    /// Bytes of tensor data alive at once (inputs the guest made and outputs it holds).
    pub max_tensor_bytes: u64,
    /// Tensors alive at once.
    pub max_tensors: u32,
}

impl Default for NnLimits {
    fn default() -> Self {
        Self { max_input_elements: 8 * 512, max_tensor_bytes: 64 << 20, max_tensors: 64 }
    }
}

/// A graph the guest holds: the model of its request.
pub struct GraphHandle(Arc<dyn Model>);

/// An execution context the guest holds.
pub struct ContextHandle(Arc<dyn Model>);

/// A wasi-nn `error` resource: a code and a message for the guest.
#[derive(Debug)]
pub struct NnFailure {
    code: errors::ErrorCode,
    detail: String,
}

/// Per-request wasi-nn state, in the request's store.
pub struct NnState {
    /// The one graph `load-by-name` finds, under the request's model name.
    graph: Option<(String, Arc<dyn Model>)>,
    limits: NnLimits,
    run: RunControl,
    tensor_bytes: u64,
    tensors: u32,
    /// Detail of the last backend failure, for the host's error report (the guest may word
    /// its own error as it likes).
    last_failure: Option<String>,
}

impl NnState {
    /// State for a request that may load `graph` as `name` (none: nothing loads).
    pub fn new(graph: Option<(String, Arc<dyn Model>)>, limits: NnLimits) -> Self {
        Self { graph, limits, run: RunControl::new(), tensor_bytes: 0, tensors: 0, last_failure: None }
    }

    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Bytes of tensor data the guest holds now.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensor_bytes
    }

    fn fail(&mut self, table: &mut ResourceTable, code: errors::ErrorCode, detail: String) -> wasmtime::Result<Resource<NnFailure>> {
        tracing::debug!(?code, detail, "wasi-nn call refused or failed");
        self.last_failure = Some(detail.clone());
        Ok(table.push(NnFailure { code, detail })?)
    }

    fn hold(&mut self, bytes: u64) -> Result<(), String> {
        let tensors = self.tensors + 1;
        let total = self.tensor_bytes.saturating_add(bytes);
        if tensors > self.limits.max_tensors {
            return Err(format!("more than {} tensors alive at once", self.limits.max_tensors));
        }
        if total > self.limits.max_tensor_bytes {
            return Err(format!("tensors would hold {total} bytes; the limit is {}", self.limits.max_tensor_bytes));
        }
        (self.tensors, self.tensor_bytes) = (tensors, total);
        Ok(())
    }

    fn release(&mut self, bytes: u64) {
        self.tensors = self.tensors.saturating_sub(1);
        self.tensor_bytes = self.tensor_bytes.saturating_sub(bytes);
    }
}

impl Drop for NnState {
    /// The request is over (answered, or its store dropped at the deadline): a run still
    /// going on a blocking thread stops at ONNX Runtime's next check.
    fn drop(&mut self) {
        self.run.terminate();
    }
}

/// What the generated bindings work on: the request's wasi-nn state and the store's table.
pub struct NnView<'a> {
    pub state: &'a mut NnState,
    pub table: &'a mut ResourceTable,
}

struct HasNn;

impl HasData for HasNn {
    type Data<'a> = NnView<'a>;
}

/// Adds the wasi-nn imports to `linker`; `view` finds them in the store's data.
pub fn add_to_linker<T: Send + 'static>(linker: &mut Linker<T>, view: fn(&mut T) -> NnView<'_>) -> wasmtime::Result<()> {
    graph::add_to_linker::<T, HasNn>(linker, view)?;
    tensor::add_to_linker::<T, HasNn>(linker, view)?;
    inference::add_to_linker::<T, HasNn>(linker, view)?;
    errors::add_to_linker::<T, HasNn>(linker, view)?;
    Ok(())
}

type Outcome<T> = wasmtime::Result<Result<T, Resource<NnFailure>>>;

impl graph::Host for NnView<'_> {
    fn load(&mut self, _: Vec<Vec<u8>>, _: graph::GraphEncoding, _: graph::ExecutionTarget) -> Outcome<Resource<GraphHandle>> {
        let failure = self.state.fail(
            self.table,
            errors::ErrorCode::Security,
            "loading a graph from bytes is not offered; use load-by-name".into(),
        )?;
        Ok(Err(failure))
    }

    fn load_by_name(&mut self, name: String) -> Outcome<Resource<GraphHandle>> {
        match &self.state.graph {
            Some((own, model)) if *own == name => Ok(Ok(self.table.push(GraphHandle(model.clone()))?)),
            _ => {
                let detail = format!("no graph named {name:?} is offered to this request");
                Ok(Err(self.state.fail(self.table, errors::ErrorCode::NotFound, detail)?))
            }
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(&mut self, graph: Resource<GraphHandle>) -> Outcome<Resource<ContextHandle>> {
        let model = self.table.get(&graph)?.0.clone();
        Ok(Ok(self.table.push(ContextHandle(model))?))
    }

    fn drop(&mut self, graph: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        context: Resource<ContextHandle>,
        inputs: Vec<(String, Resource<Tensor>)>,
    ) -> Outcome<Vec<(String, Resource<Tensor>)>> {
        let model = self.table.get(&context)?.0.clone();
        let mut named = Vec::with_capacity(inputs.len());
        for (name, resource) in inputs {
            let tensor = self.table.delete(resource)?;
            self.state.release(tensor.data.len() as u64);
            named.push(NamedTensor { name, tensor });
        }
        if let Some(refused) = named.iter().find_map(|t| {
            let elements = t.tensor.elements();
            (elements > self.state.limits.max_input_elements).then(|| {
                format!(
                    "input {:?} has {elements} elements ({:?}); the limit per inference call is {}",
                    t.name, t.tensor.dimensions, self.state.limits.max_input_elements
                )
            })
        }) {
            return Ok(Err(self.state.fail(self.table, errors::ErrorCode::TooLarge, refused)?));
        }
        let run = self.state.run.clone();
        // ONNX Runtime blocks its thread for the whole run: keep it off the async executor,
        // which must stay free to end this request at its deadline.
        let outcome = tokio::task::spawn_blocking(move || model.run(named, &run)).await;
        let outputs = match outcome {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(detail)) => return Ok(Err(self.state.fail(self.table, errors::ErrorCode::RuntimeError, detail)?)),
            Err(join) => {
                return Ok(Err(self.state.fail(self.table, errors::ErrorCode::RuntimeError, format!("inference task: {join}"))?));
            }
        };
        let mut resources = Vec::with_capacity(outputs.len());
        for output in outputs {
            if let Err(detail) = self.state.hold(output.tensor.data.len() as u64) {
                return Ok(Err(self.state.fail(self.table, errors::ErrorCode::TooLarge, format!("outputs: {detail}"))?));
            }
            resources.push((output.name, self.table.push(output.tensor)?));
        }
        Ok(Ok(resources))
    }

    fn drop(&mut self, context: Resource<ContextHandle>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(&mut self, dimensions: Vec<u32>, ty: TensorType, data: Vec<u8>) -> wasmtime::Result<Resource<Tensor>> {
        // The constructor cannot return an error in this WIT: a tensor over the budget traps
        // the guest, which fails the request.
        self.state.hold(data.len() as u64).map_err(|detail| wasmtime::format_err!("wasi-nn tensor refused: {detail}"))?;
        Ok(self.table.push(Tensor { dimensions, ty, data })?)
    }

    fn dimensions(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&tensor)?.ty)
    }

    fn data(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    fn drop(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<()> {
        let tensor = self.table.delete(tensor)?;
        self.state.release(tensor.data.len() as u64);
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<NnFailure>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnFailure>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.detail.clone())
    }

    fn drop(&mut self, error: Resource<NnFailure>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}
