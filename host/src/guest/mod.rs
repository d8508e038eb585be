//! The guest runtime: one wasmtime engine, the compiled guest component, and a fresh instance
//! for every request.
//!
//! What bounds a guest (the threat model is in `SECURITY.md`):
//! - **Time**: each call runs as an async task under a deadline. Wasm code yields to the
//!   executor at every epoch tick and traps once the deadline passed; WASI waits (sleep, poll)
//!   are async and are dropped with the call; a wasi-nn run goes on a blocking thread and is
//!   terminated when the call's store is dropped ([`crate::nn::wit`]).
//! - **Memory**: all linear memories and tables of an instance count together
//!   ([`limits::InstanceLimits`]); every byte the host holds because of the guest (wasi-nn
//!   tensors, names, contexts, error text, the answers lifted out of it) is charged to the
//!   request's [`Account`] before it is made, and wasmtime copies no more into the host in
//!   one call than the account has left; answers must be spans of the context ([`answers`])
//!   and error text is cut to [`MAX_ERROR_BYTES`].
//! - **Isolation**: nothing survives a request. Each request instantiates anew, from the
//!   snapshot [`prepare`] took of an instance that had only parsed the model's files (so the
//!   tokenizer is not parsed per request), with its own WASI context mounting only
//!   `/models/<its model>` read-only, its own resource table and a wasi-nn registry holding only
//!   its model's graph. Memory, globals, tables, tensors and handles die with the store.
//! - **Native code**: compiled artifacts only from trusted places ([`artifacts`]).
//! - **Randomness**: each store's WASI random sources are seeded from the kernel when the store
//!   is made, never from a generator the process holds: a SnapStart snapshot would give every
//!   environment restored from it that generator's state, and so the same "random" bytes.

mod answers;
mod artifacts;
mod contract;
mod engine;
mod limits;
mod prepare;
mod sandbox;
mod snapshots;
mod swap;

pub use answers::AnswerError;
pub use artifacts::{
    ArtifactError, Artifacts, DEFAULT_CACHE_BYTES, Origin, SIGNING_KEY_VAR, artifact_path, shipped_artifact_path, write_shipped_artifact,
};
pub use contract::{Answer, Decoding, HostBytes, Options, PhaseTimings, QaError as GuestQaError, Response, Version};
pub use engine::{engine_config, ship_engine};
pub use limits::InstanceBudget;
pub use sandbox::MODELS_MOUNT;
pub use swap::{FetchError, GuestLocation, LocalGuest, SwappableGuest};

use crate::boundary::MemoryBudget;
use crate::nn::{Model, NnLimits, NnState, Priority};
use contract::{Linked, Runner};
use sandbox::{HostState, sync_hostcall_fuel};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

/// Longest guest error text passed on; the rest is cut and marked.
pub const MAX_ERROR_BYTES: usize = 4096;
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Load(#[from] ArtifactError),
    #[error("guest could not be linked or instantiated (does it export qa:extractive/qa@0.3.0, @0.2.0 or @0.1.0?): {0}")]
    Instantiate(String),
    /// The guest exports no version of the contract this host knows.
    #[error("the guest exports none of {0}")]
    NoContract(String),
    /// wasmtime refused the engine's configuration (or, for `compile-guest --target`, the
    /// target).
    #[error("the guest engine could not be set up: {0}")]
    Engine(String),
    /// A thread the runtime needs could not start.
    #[error("{what} could not start: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The thread compiling the guest ended without a result.
    #[error("compiling the guest: {0}")]
    Compiler(#[source] tokio::task::JoinError),
    /// The kernel gave no randomness to seed the guest's WASI random sources with.
    #[error("no randomness from the kernel for the guest: {0}")]
    Entropy(#[source] rand::rngs::SysError),
    /// The guest could not be instrumented for snapshots (wizer).
    #[error("instrumenting the guest for snapshots: {0}")]
    Instrument(String),
    #[error("models directory {path} cannot be mounted: {reason}")]
    Mount { path: PathBuf, reason: String },
    /// The guest returned an error of the contract (its text cut to [`MAX_ERROR_BYTES`]).
    #[error("{}", .0.message())]
    Qa(GuestQaError),
    #[error("guest exceeded its deadline of {0:?}")]
    Timeout(Duration),
    #[error("guest exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimit { limit_mb: usize },
    #[error("guest trapped: {0}")]
    Trap(String),
    /// Every instance of the pool (`QA_GUEST_INSTANCES`) is running a request.
    #[error("all {0} guest instances are in use")]
    Busy(u32),
    /// The instance needed memory that other instances hold (`QA_GUEST_MEMORY_TOTAL_MB`):
    /// it would have fit alone, so it may succeed once they finish.
    #[error("the guest instances running together hold all {limit_mb} MiB of their memory budget")]
    Crowded { limit_mb: usize },
    /// The guest answered outside the contract (spans must be slices of the context, at most
    /// `top_k` of them); the answer is dropped, never forwarded.
    #[error("guest broke the answer contract: {0}")]
    BadAnswer(#[from] AnswerError),
    /// The guest made the host hold, or pass it in one call, more than its request's budget
    /// (`QA_GUEST_HOST_MB`).
    #[error("guest exceeded its host memory budget: {0}")]
    HostBudget(String),
    /// Pre-initializing the guest for a model failed; requests then run without the snapshot.
    #[error("preparing the guest for model {model:?} failed: {reason}")]
    Prepare { model: String, reason: String },
}

/// How guests run: the limits every call runs under, and whether snapshots are made.
#[derive(Clone, Debug)]
pub struct GuestSettings {
    pub deadline: Duration,
    /// All linear memories of one instance together.
    pub memory_bytes: usize,
    pub nn: NnLimits,
    /// Instances that can exist at once: more concurrent requests than this are refused.
    pub instances: u32,
    /// The count of calls running on every guest sharing these settings (serving, swapped
    /// in, candidate), at most `instances` together.
    pub instances_total: InstanceBudget,
    /// Whether a model's snapshot that was neither shipped nor cached is made (in the
    /// background for requests, at once for preloaded models). Off for one-shot commands.
    pub compile_snapshots: bool,
    /// Linear memory all instances of guests sharing these settings hold together, and the
    /// host bytes their requests' accounts hold.
    pub memory_total: MemoryBudget,
    /// Largest guest memory a snapshot is made of (`QA_GUEST_SNAPSHOT_MB`): a `prepare` that
    /// leaves more is not snapshotted, and the model serves unprepared.
    pub snapshot_bytes: usize,
}

/// A model as one request's guest sees it.
#[derive(Clone)]
pub struct GuestModel {
    /// The name the guest knows it by (`/models/<name>`, `load-by-name(<name>)`).
    pub name: String,
    /// The directory mounted read-only at `/models/<name>`.
    pub dir: PathBuf,
    /// The model's content version: a new version is prepared anew.
    pub version: String,
    /// The model as this call's inference reaches it (scheduled as the call's own).
    pub graph: Arc<dyn Model>,
    /// Whose call this is: a shadow call never takes the last free instance.
    pub priority: Priority,
}

/// One compiled guest and the instances it runs in.
pub struct GuestRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    version: Version,
    base: Linked<HostState>,
    wasm: Arc<[u8]>,
    wasm_path: PathBuf,
    artifacts: Artifacts,
    settings: GuestSettings,
    /// The guest compiled with wizer's state accessors, made on the first snapshot.
    instrumented: tokio::sync::OnceCell<Component>,
    /// Each model version's pre-initialized guest.
    snapshots: snapshots::Snapshots,
    ticker_stop: Arc<AtomicBool>,
    /// The first 12 hex digits of the wasm's SHA-256: which guest answered.
    pub id: String,
    pub origin: Origin,
    pub load_time: Duration,
}

impl GuestRuntime {
    /// Compiles (or loads) the guest at `wasm_path` and checks that it instantiates.
    pub async fn load(wasm_path: &Path, artifacts: Artifacts, settings: GuestSettings) -> Result<Arc<Self>, GuestError> {
        let started = Instant::now();
        let wasm: Arc<[u8]> =
            std::fs::read(wasm_path).map_err(|source| ArtifactError::Read { path: wasm_path.to_path_buf(), source })?.into();
        let engine = Engine::new(&engine::runtime_config(&settings)).map_err(|e| GuestError::Engine(format!("{e:#}")))?;
        let (component, origin) = {
            let (engine, artifacts, wasm, path) = (engine.clone(), artifacts.clone(), wasm.clone(), wasm_path.to_path_buf());
            tokio::task::spawn_blocking(move || artifacts.load_guest(&engine, &path, &wasm)).await.map_err(GuestError::Compiler)??
        };
        let version = Version::of(&engine, &component).ok_or_else(|| GuestError::NoContract(Version::known_exports()))?;
        let linker = engine::linker(&engine)?;
        let base = engine::link(&linker, version, &component)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        engine::spawn_epoch_ticker(engine.clone(), ticker_stop.clone())
            .map_err(|source| GuestError::Thread { what: "the deadline timer thread", source })?;
        let mut runtime = Self {
            engine,
            linker,
            version,
            base,
            id: hex::encode(&Sha256::digest(&wasm)[..6]),
            wasm,
            wasm_path: wasm_path.to_path_buf(),
            artifacts,
            settings,
            instrumented: tokio::sync::OnceCell::new(),
            snapshots: Default::default(),
            ticker_stop,
            origin,
            load_time: Duration::ZERO,
        };
        // Instantiate once now: a guest that cannot start is refused at load, not per request.
        let mut store = runtime.store(None, NnState::new(None, runtime.settings.nn), runtime.settings.deadline)?;
        runtime.base.instantiate(&mut store).await.map_err(|e| GuestError::Instantiate(format!("{e:#}")))?;
        drop(store);
        runtime.load_time = started.elapsed();
        Ok(Arc::new(runtime))
    }

    /// Which contract the guest speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Answers one question in a fresh instance that can reach only `model`, stopped after
    /// `deadline` (at most the configured limit).
    pub async fn ask(
        self: &Arc<Self>,
        model: &GuestModel,
        question: &str,
        context: &str,
        options: Options,
        deadline: Duration,
    ) -> Result<Response, GuestError> {
        let response = self
            .call(model, deadline, async |runner: &Runner, store: &mut Store<HostState>| {
                runner.ask(store, &model.name, question, context, options).await
            })
            .await?
            .map_err(|e| GuestError::Qa(e.bounded(MAX_ERROR_BYTES)))?;
        answers::check(&response, context, options.top_k)?;
        Ok(response)
    }

    /// Answers several questions over one context in one fresh instance; each entry is that
    /// question's answer or error.
    pub async fn ask_many(
        self: &Arc<Self>,
        model: &GuestModel,
        questions: &[String],
        context: &str,
        options: Options,
        deadline: Duration,
    ) -> Result<Vec<Result<Response, GuestError>>, GuestError> {
        let results = self
            .call(model, deadline, async |runner: &Runner, store: &mut Store<HostState>| {
                runner.ask_many(store, &model.name, questions, context, options).await
            })
            .await?
            .map_err(|e| GuestError::Qa(e.bounded(MAX_ERROR_BYTES)))?;
        if results.len() != questions.len() {
            return Err(AnswerError::ResultCount { results: results.len(), questions: questions.len() }.into());
        }
        Ok(results
            .into_iter()
            .map(|result| {
                let response = result.map_err(|e| GuestError::Qa(e.bounded(MAX_ERROR_BYTES)))?;
                answers::check(&response, context, options.top_k)?;
                Ok(response)
            })
            .collect())
    }

    /// Runs `work` on a fresh instance for `model` under the deadline; classifies traps. What
    /// `work` lifts out of the guest is charged to the request's account.
    async fn call<R: HostBytes>(
        self: &Arc<Self>,
        model: &GuestModel,
        deadline: Duration,
        work: impl AsyncFnOnce(&Runner, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, GuestError> {
        let deadline = deadline.min(self.settings.deadline);
        // One count for every guest of the host (a candidate's engine has a pool of its own).
        let instance = self.settings.instances_total.take(model.priority).ok_or(GuestError::Busy(self.settings.instances))?;
        let (template, prepared) = self.template(model);
        if !prepared {
            self.prepare_in_background(model);
        }
        let nn = NnState::new(Some((model.name.clone(), model.graph.clone())), self.settings.nn);
        let mut store = self.store(Some((&model.name, &model.dir)), nn, deadline)?;
        let run = async {
            let runner = template.instantiate(&mut store).await?;
            // From here the call holds a pool slot: the line tests wait on (instead of a pause)
            // before they count on a guest being busy, and that shows which guest ran a call.
            tracing::debug!(guest = %self.id, model = %model.name, "guest instance started");
            // Instantiating ran guest code that may have charged the account.
            sync_hostcall_fuel(&mut store);
            work(&runner, &mut store).await
        };
        let outcome = match tokio::time::timeout(deadline, run).await {
            Err(_) => Err(GuestError::Timeout(deadline)),
            Ok(Ok(result)) => match store.data_mut().account.charge(result.host_bytes(), "the answers lifted out of the guest") {
                Ok(()) => Ok(result),
                Err(refused) => Err(self.over_budget(&refused)),
            },
            Ok(Err(error)) => Err(self.classify_trap(&store, error, deadline)),
        };
        store.data().account.report(&self.id);
        // Dropping the store returns the instance's slot to the pool, which resets the pages
        // the request wrote (0.15 ms for the shipped guest, see `runtime_config`). Done here,
        // not in the background, so the next request finds this slot free and warm, and
        // sequential requests keep one slot resident, not two.
        drop(store);
        drop(instance);
        outcome
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Guest instances that can exist at once (requests in flight, each with its own).
pub const DEFAULT_INSTANCES: u32 = 256;
/// Largest guest memory a snapshot is made of by default (`QA_GUEST_SNAPSHOT_MB`): the shipped
/// guest's is 8.4 MiB.
pub const DEFAULT_SNAPSHOT_BYTES: usize = 128 << 20;
