//! The guest runtime: one wasmtime engine, the compiled guest component, and a pool of
//! instances reused across requests.
//!
//! Each call runs under an epoch deadline and a linear-memory cap. The guest sees WASI with
//! each model's directory read-only at `/models/<name>`, no environment, no network and no
//! other files, plus `wasi:nn` with a registry holding only the graph the request named. An
//! instance that traps is dropped, never reused; the next call gets a fresh one.

mod cache;
mod swap;

pub use swap::SwappableGuest;

pub use cache::{CacheError, Origin, load_component, shipped_artifact_path, write_shipped_artifact};

use crate::nn::{NoGraphs, SingleGraph, take_backend_error};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_nn::Graph;
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};

wasmtime::component::bindgen!({
    path: "../wit",
    inline: "package qa:host; world runner { export qa:extractive/qa@0.1.0; }",
    world: "runner",
});

pub use exports::qa::extractive::qa::{Answer, Options, QaError as GuestQaError, Response, Timings};

/// Where the guest sees the models directory.
pub const MODELS_MOUNT: &str = "/models";
/// Epoch granularity: deadlines are enforced to within one tick.
const TICK: Duration = Duration::from_millis(10);
/// Bytes of guest stderr kept per instance (panic messages end up in error reports).
const STDERR_CAPACITY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Load(#[from] CacheError),
    #[error("guest could not be linked or instantiated (was it built for qa:extractive/qa@0.1.0?): {0}")]
    Instantiate(String),
    #[error("models directory {path} cannot be mounted: {reason}")]
    Mount { path: PathBuf, reason: String },
    /// The guest returned an error of the contract.
    #[error("{0:?}")]
    Qa(GuestQaError),
    #[error("guest exceeded its deadline of {0:?}")]
    Timeout(Duration),
    #[error("guest exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimit { limit_mb: usize },
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest answered outside the contract (spans must be slices of the context, at most
    /// `top_k` of them); the answer is dropped, never forwarded.
    #[error("guest broke the answer contract: {0}")]
    BadAnswer(String),
}

/// Limits every guest call runs under.
#[derive(Clone, Copy, Debug)]
pub struct GuestLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

/// Per-store state: WASI, wasi-nn and the limiter.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    nn: WasiNnCtx,
    limiter: MemoryCap,
    stderr: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory and table growth, remembering whether it refused, so a trap that
/// follows a refused allocation is reported as a memory-limit error.
struct MemoryCap {
    max_bytes: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= 1 << 20;
        self.refused |= !allowed;
        Ok(allowed)
    }
}

struct Instance {
    store: Store<HostState>,
    runner: Runner,
    /// Model name → host directory mounted read-only at `/models/<name>`.
    mounts: Mounts,
}

type Mounts = BTreeMap<String, PathBuf>;

/// Compiles (or loads from cache) the guest once and runs calls on pooled instances.
pub struct GuestRuntime {
    engine: Engine,
    pre: RunnerPre<HostState>,
    /// Every model directory a request has used; new instances mount them all.
    mounts: Mutex<Mounts>,
    limits: GuestLimits,
    pool: Mutex<Vec<Instance>>,
    ticker_stop: Arc<AtomicBool>,
    pub origin: Origin,
    pub load_time: Duration,
}

impl GuestRuntime {
    pub fn new(wasm: &Path, cache_dir: &Path, limits: GuestLimits) -> Result<Self, GuestError> {
        let started = Instant::now();
        let engine = Engine::new(&engine_config()).map_err(|e| GuestError::Instantiate(format!("{e:#}")))?;
        let (component, origin) = load_component(&engine, wasm, cache_dir)?;
        let pre = Self::link(&engine, &component)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())
            .map_err(|e| GuestError::Instantiate(format!("starting the deadline timer thread: {e}")))?;
        let runtime = Self {
            engine,
            pre,
            mounts: Mutex::new(Mounts::new()),
            limits,
            pool: Mutex::new(Vec::new()),
            ticker_stop,
            origin,
            load_time: started.elapsed(),
        };
        // Instantiate once now: a guest that cannot start is refused at load, not per request.
        let instance = runtime.instantiate(Mounts::new())?;
        runtime.checkin(instance);
        Ok(runtime)
    }

    fn link(engine: &Engine, component: &Component) -> Result<RunnerPre<HostState>, GuestError> {
        let mut linker: Linker<HostState> = Linker::new(engine);
        let err = |e: wasmtime::Error| GuestError::Instantiate(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(err)?;
        wasmtime_wasi_nn::wit::add_to_linker(&mut linker, |s: &mut HostState| WasiNnView::new(&mut s.table, &mut s.nn)).map_err(err)?;
        let pre = linker.instantiate_pre(component).map_err(err)?;
        RunnerPre::new(pre).map_err(err)
    }

    fn instantiate(&self, mounts: Mounts) -> Result<Instance, GuestError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone()).allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for (name, dir) in &mounts {
            wasi.preopened_dir(dir, format!("{MODELS_MOUNT}/{name}"), FsPerms::ReadOnly)
                .map_err(|e| GuestError::Mount { path: dir.clone(), reason: format!("{e:#}") })?;
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            nn: WasiNnCtx::new([], NoGraphs.into()),
            limiter: MemoryCap { max_bytes: self.limits.memory_bytes, refused: false },
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks(self.limits.deadline));
        let runner = self.pre.instantiate(&mut store).map_err(|e| GuestError::Instantiate(format!("{e:#}")))?;
        Ok(Instance { store, runner, mounts })
    }

    /// An instance that mounts `dir` as `model`. Instances instantiated before a model (or a
    /// new version of it) appeared lack its mount and are dropped; the replacement mounts
    /// every model used so far.
    fn checkout(&self, model: &str, dir: &Path) -> Result<Instance, GuestError> {
        let wanted = {
            let mut mounts = self.mounts.lock().map_err(|_| GuestError::Instantiate("mount table poisoned".into()))?;
            mounts.insert(model.to_string(), dir.to_path_buf());
            // A replaced S3 version's directory is deleted; never try to mount it again.
            mounts.retain(|_, d| d.is_dir());
            mounts.clone()
        };
        while let Some(instance) = self.pool.lock().ok().and_then(|mut pool| pool.pop()) {
            if instance.mounts == wanted {
                return Ok(instance);
            }
        }
        self.instantiate(wanted)
    }

    fn checkin(&self, instance: Instance) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(instance);
        }
    }

    /// Runs `ask` on a pooled instance that can load only `graph`, named `model`, and reads
    /// the model's files from `dir`, stopping the guest after `deadline` (at most the
    /// configured limit).
    pub fn ask(
        &self,
        model: &str,
        dir: &Path,
        graph: Graph,
        question: &str,
        context: &str,
        options: Options,
        deadline: Duration,
    ) -> Result<Response, GuestError> {
        let deadline = deadline.min(self.limits.deadline);
        let mut instance = self.checkout(model, dir)?;
        let store = &mut instance.store;
        store.data_mut().nn = WasiNnCtx::new([], SingleGraph::new(model, graph).into());
        store.data_mut().limiter.refused = false;
        store.set_epoch_deadline(ticks(deadline));
        take_backend_error();
        let outcome = instance.runner.qa_extractive_qa().call_ask(&mut instance.store, model, question, context, options);
        match outcome {
            Ok(result) => {
                // Drop the graph between requests: an idle instance can load nothing.
                instance.store.data_mut().nn = WasiNnCtx::new([], NoGraphs.into());
                self.checkin(instance);
                let response = result.map_err(|error| match (error, take_backend_error()) {
                    (GuestQaError::Inference(message), Some(detail)) => {
                        GuestError::Qa(GuestQaError::Inference(format!("{message}: {detail}")))
                    }
                    (error, _) => GuestError::Qa(error),
                })?;
                check_answers(&response, context, options.top_k).map_err(GuestError::BadAnswer)?;
                Ok(response)
            }
            Err(error) => Err(self.classify_trap(&instance, error, deadline)),
        }
    }

    fn classify_trap(&self, instance: &Instance, error: wasmtime::Error, deadline: Duration) -> GuestError {
        let state = instance.store.data();
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return GuestError::Timeout(deadline);
        }
        if state.limiter.refused {
            return GuestError::MemoryLimit { limit_mb: self.limits.memory_bytes >> 20 };
        }
        let stderr = state.stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        let last_lines: Vec<&str> = stderr.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
        if last_lines.is_empty() {
            GuestError::Trap(format!("{error:#}"))
        } else {
            GuestError::Trap(format!("{error:#}; guest stderr: {}", last_lines.join(" | ")))
        }
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A guest is untrusted code: its answers must be character spans of the context with exactly
/// that text, at most `top_k` of them, scores finite. This also bounds what a guest can make
/// the host send back (no answer is larger than the request's context).
fn check_answers(response: &Response, context: &str, top_k: u32) -> Result<(), String> {
    if response.answers.len() > top_k as usize {
        return Err(format!("{} answers for top_k {top_k}", response.answers.len()));
    }
    // Byte offset of each character boundary up to the furthest answer end, so character
    // offsets map to slices in O(1) (an answer past the context's end finds no boundary).
    let furthest = response.answers.iter().map(|a| a.end as usize).max().unwrap_or(0);
    let boundaries: Vec<usize> =
        context.char_indices().map(|(i, _)| i).chain(std::iter::once(context.len())).take(furthest.saturating_add(1)).collect();
    for (i, answer) in response.answers.iter().enumerate() {
        let (start, end) = (answer.start as usize, answer.end as usize);
        let slice = (start <= end)
            .then(|| Some(&context[*boundaries.get(start)?..*boundaries.get(end)?]))
            .flatten()
            .ok_or_else(|| format!("answer {i} spans characters {start}..{end} of a {}-character context", context.chars().count()))?;
        if answer.text != slice {
            return Err(format!("answer {i} text ({} bytes) is not the context's characters {start}..{end}", answer.text.len()));
        }
        if !answer.score.is_finite() {
            return Err(format!("answer {i} has score {}", answer.score));
        }
    }
    Ok(())
}

/// Epoch ticks in `deadline`, at least one.
fn ticks(deadline: Duration) -> u64 {
    u64::try_from(deadline.as_millis() / TICK.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Engine settings shared by compilation and execution (a precompiled artifact only loads
/// into an engine configured the same way).
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

/// Advances the engine's epoch every [`TICK`] until `stop` is set (when the runtime drops).
fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("qa-epoch".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(answers: &[(&str, u32, u32, f64)]) -> Response {
        Response {
            answers: answers.iter().map(|&(text, start, end, score)| Answer { text: text.into(), score, start, end }).collect(),
            timings: Timings { tokenize_us: 0, inference_us: 0, decode_us: 0, windows: 1 },
        }
    }

    #[test]
    fn answers_must_be_character_slices_of_the_context() {
        let context = "Benz, née 1844, built it in 1886 🚗.";
        assert_eq!(check_answers(&response(&[("1886", 28, 32, 0.9)]), context, 1), Ok(()));
        assert_eq!(check_answers(&response(&[("🚗", 33, 34, 0.1), ("née", 6, 9, 0.1)]), context, 2), Ok(()));
        assert_eq!(check_answers(&response(&[("", 0, 0, 0.0)]), context, 1), Ok(()), "the no-answer span");
        let refused = |answers: &[(&str, u32, u32, f64)], top_k| check_answers(&response(answers), context, top_k).unwrap_err();
        assert!(refused(&[("1886", 28, 32, 0.9), ("1844", 10, 14, 0.1)], 1).contains("2 answers"));
        assert!(refused(&[("x", 35, 99, 0.5)], 1).contains("35..99"));
        assert!(refused(&[("", 5, 4, 0.5)], 1).contains("5..4"));
        assert!(refused(&[("ok", 0, 2, 0.5)], 1).contains("not the context's"));
        assert!(refused(&[(&"A".repeat(1 << 20), 0, 4, 0.5)], 1).contains("1048576 bytes"));
        assert!(refused(&[("1886", 28, 32, f64::NAN)], 1).contains("NaN"));
    }
}
