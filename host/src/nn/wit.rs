//! The `wasi:nn@0.2.0-rc-2024-10-28` imports a guest sees, bounded by construction.
//!
//! The host implements the WIT itself rather than with wasmtime-wasi-nn's binding: that
//! binding is synchronous (a `compute` blocks the thread that runs the guest, beyond its
//! deadline), copies every argument into the host before the host can look at it, and has no
//! place to bound what a guest makes the host hold. Here every import is registered by hand
//! with wasmtime's lazily lifted argument types (`WasmStr`, `WasmList`), so:
//! - a guest-supplied size is checked before anything is copied: a name is compared or
//!   refused where it lies in guest memory, a rank or input count over its maximum
//!   ([`MAX_RANK`], [`MAX_INPUTS`], [`MAX_NAME_BYTES`]) is refused at once, and a graph
//!   builder (`load`) is never read;
//! - every byte the host keeps for the guest (a tensor's data, its dimension list, its name
//!   as an input or output, an execution context, error text, ONNX Runtime's copy of the
//!   inputs while they run) is charged to the request's [`Account`] before it is made, and a
//!   charge over the budget is refused: as a wasi-nn error where the function has one, as a
//!   trap where it has not (the tensor constructor);
//! - after every call the store's hostcall fuel is set to what the account has left, so no
//!   later call (wasi-nn or WASI) can make wasmtime copy more into the host than that;
//! - no guest data reaches host text unbounded: error text quotes at most [`NAME_EXCERPT`]
//!   bytes of a name, and is cut to [`MAX_DETAIL_BYTES`];
//! - each call's own work is proportional to what it charges (the time each took is recorded
//!   on the account); `compute` runs ONNX Runtime off the async executor, and the run is
//!   terminated when the request ends ([`RunControl`]);
//! - `load-by-name` finds only the graph of the request's model; `load` from bytes is refused;
//! - tensors alive at once also count against [`NnLimits`] (bytes and count), and a `compute`
//!   whose inputs exceed the element budget is refused before it starts;
//! - a backend failure reaches the guest as a `runtime-error` with its detail, and the host
//!   reads the last detail back from [`NnState::last_failure`] for its error report.

use super::{Model, NamedTensor, RunControl, Tensor};
use crate::boundary::{Account, bound_text};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable, ResourceType, WasmList, WasmStr};

mod generated {
    // Only the WIT's types are used (enums and resources); the imports are registered by
    // hand in `add_to_linker`.
    wasmtime::component::bindgen!({
        world: "ml",
        path: "../wit/deps/wasi-nn",
        with: {
            "wasi:nn/graph.graph": super::GraphHandle,
            "wasi:nn/tensor.tensor": super::HeldTensor,
            "wasi:nn/inference.graph-execution-context": super::ContextHandle,
            "wasi:nn/errors.error": super::NnFailure,
        },
    });
}

use generated::wasi::nn::errors::ErrorCode;
use generated::wasi::nn::graph::{ExecutionTarget, GraphEncoding};
pub use generated::wasi::nn::tensor::TensorType;

/// The interfaces' version, as the guest imports them.
const VERSION: &str = "0.2.0-rc-2024-10-28";
/// Longest graph or input name the host reads (model directory names are at most 255 bytes).
pub const MAX_NAME_BYTES: usize = 256;
/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 8;
/// Most named inputs one `compute` may pass.
pub const MAX_INPUTS: usize = 16;
/// Longest error text kept for the guest or the host's report.
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Bytes of a refused name an error message quotes.
pub const NAME_EXCERPT: usize = 64;

/// What one request's guest may make the host hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NnLimits {
    /// Elements of any one `compute` input (rows × sequence for token ids). The shipped
    /// guest sends at most `MAX_BATCH_ROWS` windows of at most 512 tokens per call.
    pub max_input_elements: u64,
    /// Bytes of tensor data alive at once (inputs the guest made and outputs it holds).
    pub max_tensor_bytes: u64,
    /// Tensors alive at once.
    pub max_tensors: u32,
    /// Every byte the host holds for the request's guest, tensor data included: the
    /// request's [`Account`] (`QA_GUEST_HOST_MB`).
    pub max_host_bytes: u64,
}

impl Default for NnLimits {
    fn default() -> Self {
        Self { max_input_elements: 8 * 512, max_tensor_bytes: 64 << 20, max_tensors: 64, max_host_bytes: 96 << 20 }
    }
}

/// A graph the guest holds: the model of its request.
pub struct GraphHandle(Arc<dyn Model>);

/// An execution context the guest holds.
pub struct ContextHandle(Arc<dyn Model>);

/// A tensor the guest holds, with what it was charged. Its data is shared, not copied, when
/// the guest reads it back.
pub struct HeldTensor {
    dimensions: Vec<u32>,
    ty: TensorType,
    data: Arc<Vec<u8>>,
    charged: u64,
}

impl HeldTensor {
    /// What holding a tensor of `rank` dimensions and `bytes` of data (and a name of
    /// `name_bytes`, for an output) costs the host.
    fn cost(rank: usize, bytes: usize, name_bytes: usize) -> u64 {
        (size_of::<Self>() + rank * size_of::<u32>() + bytes + name_bytes) as u64
    }
}

/// A wasi-nn `error` resource: a code and a message for the guest.
#[derive(Debug)]
pub struct NnFailure {
    code: ErrorCode,
    detail: Arc<str>,
    charged: u64,
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
    /// its own error as it likes), and what keeping it is charged.
    last_failure: Option<(Arc<str>, u64)>,
}

impl NnState {
    /// State for a request that may load `graph` as `name` (none: nothing loads).
    pub fn new(graph: Option<(String, Arc<dyn Model>)>, limits: NnLimits) -> Self {
        Self { graph, limits, run: RunControl::new(), tensor_bytes: 0, tensors: 0, last_failure: None }
    }

    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_ref().map(|(detail, _)| &**detail)
    }

    /// Bytes of tensor data the guest holds now.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensor_bytes
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

/// What the imports work on: the request's wasi-nn state, the store's table and the
/// request's account.
pub struct NnView<'a> {
    pub state: &'a mut NnState,
    pub table: &'a mut ResourceTable,
    pub account: &'a mut Account,
}

impl NnView<'_> {
    /// A wasi-nn error for the guest, its text cut and charged; the last one is also kept for
    /// the host's report.
    fn fail(&mut self, code: ErrorCode, detail: String) -> wasmtime::Result<Resource<NnFailure>> {
        let detail: Arc<str> = bound_text(detail, MAX_DETAIL_BYTES).into();
        tracing::debug!(?code, %detail, "wasi-nn call refused or failed");
        let charged = (size_of::<NnFailure>() + detail.len()) as u64;
        self.account.charge(charged, "a wasi-nn error").map_err(|refused| wasmtime::format_err!("wasi-nn error refused: {refused}"))?;
        // Shared with the resource, but charged again: it outlives the resource when the
        // guest drops the error.
        if let Some((_, kept)) = self.state.last_failure.take() {
            self.account.release(kept);
        }
        if self.account.charge(detail.len() as u64, "the last wasi-nn error").is_ok() {
            self.state.last_failure = Some((detail.clone(), detail.len() as u64));
        }
        Ok(self.table.push(NnFailure { code, detail, charged })?)
    }

    /// Takes `resource` out of the table and gives back what it was charged.
    fn drop_tensor(&mut self, resource: Resource<HeldTensor>) -> wasmtime::Result<HeldTensor> {
        let tensor = self.table.delete(resource)?;
        self.state.release(tensor.data.len() as u64);
        self.account.release(tensor.charged);
        Ok(tensor)
    }
}

/// `text`'s first [`NAME_EXCERPT`] bytes, quoted, and its length: how error messages name
/// what a guest sent.
fn excerpt(text: &str) -> String {
    if text.len() <= NAME_EXCERPT {
        return format!("{text:?}");
    }
    let mut end = NAME_EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

type Outcome<T> = Result<T, Resource<NnFailure>>;
type View<T> = fn(&mut T) -> NnView<'_>;

/// Ends one import: records its host time (less `waited`) and sets the store's hostcall fuel
/// to what the account has left, so the next call cannot copy in more.
fn settle<T>(store: &mut StoreContextMut<'_, T>, view: View<T>, started: Instant, waited: Duration) {
    let nn = view(store.data_mut());
    nn.account.record_call(started, waited);
    let fuel = usize::try_from(nn.account.remaining()).unwrap_or(usize::MAX);
    store.set_hostcall_fuel(fuel);
}

/// Runs an import's body (a closure, so `?` ends the body, not the import).
fn body<R>(run: impl FnOnce() -> wasmtime::Result<R>) -> wasmtime::Result<R> {
    run()
}

/// Registers a synchronous import whose body sees the store and the view.
macro_rules! import {
    ($instance:expr, $name:expr, $view:expr, |$store:ident, $params:tt : $types:ty| $body:expr) => {{
        let view = $view;
        $instance.func_wrap($name, move |mut $store: StoreContextMut<'_, T>, $params: $types| {
            let started = Instant::now();
            let result = body(|| $body);
            settle(&mut $store, view, started, Duration::ZERO);
            result.map(|r| (r,))
        })?;
    }};
}

/// Adds the wasi-nn imports to `linker`; `view` finds them in the store's data.
pub fn add_to_linker<T: Send + 'static>(linker: &mut Linker<T>, view: View<T>) -> wasmtime::Result<()> {
    let mut tensor = linker.instance(&format!("wasi:nn/tensor@{VERSION}"))?;
    tensor.resource("tensor", ResourceType::host::<HeldTensor>(), move |mut store, rep| {
        let started = Instant::now();
        let dropped = view(store.data_mut()).drop_tensor(Resource::new_own(rep)).map(drop);
        settle(&mut store, view, started, Duration::ZERO);
        dropped
    })?;
    import!(tensor, "[constructor]tensor", view, |store, (dimensions, ty, data): (WasmList<u32>, TensorType, WasmList<u8>)| {
        new_tensor(&mut store, view, dimensions, ty, data)
    });
    import!(tensor, "[method]tensor.dimensions", view, |store, (tensor,): (Resource<HeldTensor>,)| {
        // At most `MAX_RANK` entries: a copy too small to charge.
        Ok(view(store.data_mut()).table.get(&tensor)?.dimensions.clone())
    });
    import!(tensor, "[method]tensor.ty", view, |store, (tensor,): (Resource<HeldTensor>,)| {
        Ok(view(store.data_mut()).table.get(&tensor)?.ty)
    });
    import!(tensor, "[method]tensor.data", view, |store, (tensor,): (Resource<HeldTensor>,)| {
        // Shared, not copied: wasmtime writes it straight into the guest's memory.
        Ok(view(store.data_mut()).table.get(&tensor)?.data.clone())
    });

    let mut errors = linker.instance(&format!("wasi:nn/errors@{VERSION}"))?;
    errors.resource("error", ResourceType::host::<NnFailure>(), move |mut store, rep| {
        let started = Instant::now();
        let nn = view(store.data_mut());
        let dropped = nn.table.delete(Resource::<NnFailure>::new_own(rep)).map(|failure| nn.account.release(failure.charged));
        settle(&mut store, view, started, Duration::ZERO);
        Ok(dropped?)
    })?;
    import!(errors, "[method]error.code", view, |store, (error,): (Resource<NnFailure>,)| {
        Ok(view(store.data_mut()).table.get(&error)?.code)
    });
    import!(errors, "[method]error.data", view, |store, (error,): (Resource<NnFailure>,)| {
        Ok(view(store.data_mut()).table.get(&error)?.detail.clone())
    });

    let mut inference = linker.instance(&format!("wasi:nn/inference@{VERSION}"))?;
    inference.resource("graph-execution-context", ResourceType::host::<ContextHandle>(), move |mut store, rep| {
        let started = Instant::now();
        let nn = view(store.data_mut());
        let dropped = nn.table.delete(Resource::<ContextHandle>::new_own(rep)).map(|_| nn.account.release(HANDLE_COST));
        settle(&mut store, view, started, Duration::ZERO);
        Ok(dropped.map(drop)?)
    })?;
    inference.func_wrap_async(
        "[method]graph-execution-context.compute",
        move |mut store: StoreContextMut<'_, T>,
              (context, inputs): (Resource<ContextHandle>, WasmList<(WasmStr, Resource<HeldTensor>)>)| {
            Box::new(async move {
                let started = Instant::now();
                let (result, waited) = compute(&mut store, view, context, inputs).await;
                settle(&mut store, view, started, waited);
                result.map(|r| (r,))
            })
        },
    )?;

    let mut graph = linker.instance(&format!("wasi:nn/graph@{VERSION}"))?;
    graph.resource("graph", ResourceType::host::<GraphHandle>(), move |mut store, rep| {
        let started = Instant::now();
        let nn = view(store.data_mut());
        let dropped = nn.table.delete(Resource::<GraphHandle>::new_own(rep)).map(|_| nn.account.release(HANDLE_COST));
        settle(&mut store, view, started, Duration::ZERO);
        Ok(dropped.map(drop)?)
    })?;
    import!(
        graph,
        "load",
        view,
        // The builders are never read: neither copied nor looked at.
        |store, (_builders, _encoding, _target): (WasmList<WasmList<u8>>, GraphEncoding, ExecutionTarget)| {
            let refusal = "loading a graph from bytes is not offered; use load-by-name".to_string();
            Ok(Outcome::<Resource<GraphHandle>>::Err(view(store.data_mut()).fail(ErrorCode::Security, refusal)?))
        }
    );
    import!(graph, "load-by-name", view, |store, (name,): (WasmStr,)| load_by_name(&mut store, view, &name));
    import!(graph, "[method]graph.init-execution-context", view, |store, (graph,): (Resource<GraphHandle>,)| {
        let mut nn = view(store.data_mut());
        let model = nn.table.get(&graph)?.0.clone();
        Ok(match nn.account.charge(HANDLE_COST, "an execution context") {
            Ok(()) => Ok(nn.table.push(ContextHandle(model))?),
            Err(refused) => Err(nn.fail(ErrorCode::TooLarge, refused.to_string())?),
        })
    });
    Ok(())
}

/// What a graph or execution context handle costs the host: the handle itself (the table's
/// entries are reserved with the WASI context).
const HANDLE_COST: u64 = size_of::<ContextHandle>() as u64;

fn new_tensor<T>(
    store: &mut StoreContextMut<'_, T>,
    view: View<T>,
    dimensions: WasmList<u32>,
    ty: TensorType,
    data: WasmList<u8>,
) -> wasmtime::Result<Resource<HeldTensor>> {
    // The constructor cannot return an error in this WIT: a refused tensor traps the guest,
    // which fails the request.
    let refuse = |detail: &dyn std::fmt::Display| wasmtime::format_err!("wasi-nn tensor refused: {detail}");
    if dimensions.len() > MAX_RANK {
        return Err(refuse(&format_args!("{} dimensions; at most {MAX_RANK} are accepted", dimensions.len())));
    }
    let bytes = data.len() as u64;
    let charged = HeldTensor::cost(dimensions.len(), data.len(), 0);
    {
        let nn = view(store.data_mut());
        nn.state.hold(bytes).map_err(|detail| refuse(&detail))?;
        if let Err(refused) = nn.account.charge(charged, "a wasi-nn tensor") {
            nn.state.release(bytes);
            return Err(refuse(&refused));
        }
    }
    // Charged: now copied.
    let dimensions = dimensions.as_le_slice(&*store).iter().map(|&d| u32::from_le(d)).collect();
    let data = Arc::new(data.as_le_slice(&*store).to_vec());
    let nn = view(store.data_mut());
    match nn.table.push(HeldTensor { dimensions, ty, data, charged }) {
        Ok(resource) => Ok(resource),
        Err(full) => {
            nn.state.release(bytes);
            nn.account.release(charged);
            Err(full.into())
        }
    }
}

fn load_by_name<T>(store: &mut StoreContextMut<'_, T>, view: View<T>, name: &WasmStr) -> wasmtime::Result<Outcome<Resource<GraphHandle>>> {
    let offered = view(store.data_mut()).state.graph.as_ref().map(|(own, model)| (own.clone(), model.clone()));
    // Read where it lies in guest memory: compared, never copied (a refusal quotes an excerpt).
    let (found, refusal) = {
        let name = name.to_str(&*store)?;
        match offered {
            Some((own, model)) if *own == *name => (Some(model), None),
            _ => (None, Some(format!("no graph named {} is offered to this request", excerpt(&name)))),
        }
    };
    let mut nn = view(store.data_mut());
    Ok(match (found, refusal) {
        (Some(model), _) => match nn.account.charge(HANDLE_COST, "a graph") {
            Ok(()) => Ok(nn.table.push(GraphHandle(model))?),
            Err(refused) => Err(nn.fail(ErrorCode::TooLarge, refused.to_string())?),
        },
        (None, refusal) => Err(nn.fail(ErrorCode::NotFound, refusal.unwrap_or_default())?),
    })
}

/// One `compute`: the inputs are taken out of the guest's hands (their names checked before
/// they are copied), charged with ONNX Runtime's copy of them while the run lasts, checked
/// against the element budget, run off the executor, and the outputs charged as the guest
/// gets them. Returns the outcome and how long the run itself took.
async fn compute<T: Send>(
    store: &mut StoreContextMut<'_, T>,
    view: View<T>,
    context: Resource<ContextHandle>,
    inputs: WasmList<(WasmStr, Resource<HeldTensor>)>,
) -> (wasmtime::Result<Outcome<Vec<(String, Resource<HeldTensor>)>>>, Duration) {
    let mut waited = Duration::ZERO;
    let result = async {
        let model = view(store.data_mut()).table.get(&context)?.0.clone();
        if inputs.len() > MAX_INPUTS {
            let refusal = format!("{} inputs; at most {MAX_INPUTS} are accepted per inference call", inputs.len());
            return Ok(Err(view(store.data_mut()).fail(ErrorCode::TooLarge, refusal)?));
        }
        let mut named = Vec::with_capacity(inputs.len());
        let (mut charged, mut refusal) = (0u64, None);
        for index in 0..inputs.len() {
            let Some(input) = inputs.get(&mut *store, index) else { break };
            let (name, resource) = input?;
            let name = {
                let name = name.to_str(&*store)?;
                if name.len() > MAX_NAME_BYTES {
                    refusal.get_or_insert(format!("input name {} is over {MAX_NAME_BYTES} bytes", excerpt(&name)));
                    String::new()
                } else {
                    name.into_owned()
                }
            };
            let nn = view(store.data_mut());
            let tensor = nn.table.delete(resource)?;
            // The tensor leaves the guest's hands (its count and bytes against `NnLimits`),
            // but the host still holds it until the run ends.
            nn.state.release(tensor.data.len() as u64);
            charged += tensor.charged;
            let data = Arc::try_unwrap(tensor.data).unwrap_or_else(|shared| (*shared).clone());
            named.push(NamedTensor { name, tensor: Tensor { dimensions: tensor.dimensions, ty: tensor.ty, data } });
        }
        let mut nn = view(store.data_mut());
        // ONNX Runtime copies the inputs into its own values for the run.
        let copy: u64 = named.iter().map(|t| t.tensor.data.len() as u64).sum();
        if refusal.is_none() {
            match nn.account.charge(copy, "ONNX Runtime's copy of the inputs") {
                Ok(()) => charged += copy,
                Err(refused) => refusal = Some(refused.to_string()),
            }
        }
        if refusal.is_none() {
            refusal = named.iter().find_map(|t| {
                let elements = t.tensor.elements();
                (elements > nn.state.limits.max_input_elements).then(|| {
                    format!(
                        "input {:?} has {elements} elements ({:?}); the limit per inference call is {}",
                        t.name, t.tensor.dimensions, nn.state.limits.max_input_elements
                    )
                })
            });
        }
        if let Some(refusal) = refusal {
            nn.account.release(charged);
            return Ok(Err(nn.fail(ErrorCode::TooLarge, refusal)?));
        }
        let run = nn.state.run.clone();
        // ONNX Runtime blocks its thread for the whole run: keep it off the async executor,
        // which must stay free to end this request at its deadline.
        let running = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || model.run(named, &run)).await;
        waited = running.elapsed();
        let mut nn = view(store.data_mut());
        nn.account.release(charged);
        let outputs = match outcome {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(detail)) => return Ok(Err(nn.fail(ErrorCode::RuntimeError, detail)?)),
            Err(join) => return Ok(Err(nn.fail(ErrorCode::RuntimeError, format!("inference task: {join}"))?)),
        };
        let mut resources = Vec::with_capacity(outputs.len());
        for NamedTensor { name, tensor } in outputs {
            let bytes = tensor.data.len() as u64;
            let cost = HeldTensor::cost(tensor.dimensions.len(), tensor.data.len(), name.len());
            if let Err(detail) = nn.state.hold(bytes) {
                return Ok(Err(nn.fail(ErrorCode::TooLarge, format!("outputs: {detail}"))?));
            }
            if let Err(refused) = nn.account.charge(cost, "an inference output") {
                nn.state.release(bytes);
                return Ok(Err(nn.fail(ErrorCode::TooLarge, format!("outputs: {refused}"))?));
            }
            let held = HeldTensor { dimensions: tensor.dimensions, ty: tensor.ty, data: Arc::new(tensor.data), charged: cost };
            resources.push((name, nn.table.push(held)?));
        }
        Ok(Ok(resources))
    }
    .await;
    (result, waited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_names_are_quoted_by_an_excerpt_of_bounded_length() {
        assert_eq!(excerpt("nlp1"), "\"nlp1\"");
        let long = "é".repeat(1 << 20);
        let quoted = excerpt(&long);
        assert!(quoted.len() < 2 * NAME_EXCERPT + 40, "{} bytes", quoted.len());
        assert!(quoted.ends_with(&format!("({} bytes)", 2 << 20)), "{quoted}");
        // Escaped as Debug escapes, so control characters cannot forge log lines.
        assert_eq!(excerpt("a\nb"), "\"a\\nb\"");
    }
}
