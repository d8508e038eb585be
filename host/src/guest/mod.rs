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
//! - **Native code**: compiled artifacts only from trusted places ([`cache`]).
//! - **Randomness**: each store's WASI random sources are seeded from the kernel when the store
//!   is made, never from a generator the process holds: a SnapStart snapshot would give every
//!   environment restored from it that generator's state, and so the same "random" bytes.

mod account;
mod answers;
mod cache;
mod contract;
mod limits;
mod prepare;
mod swap;

pub use account::{Account, Refused};
pub use cache::{
    Artifacts, CacheError, DEFAULT_CACHE_BYTES, Origin, SIGNING_KEY_VAR, artifact_path, shipped_artifact_path, write_shipped_artifact,
};
pub use contract::{Answer, Decoding, HostBytes, Options, QaError as GuestQaError, Response, Timings, Version, bound_text};
pub use limits::{InstanceBudget, MemoryBudget};
pub use swap::{SwappableGuest, resolve_guest};

use crate::nn::{Model, NnLimits, NnState, NnView, Priority};
use contract::{Linked, Runner};
use limits::InstanceLimits;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Where the guest sees the models directory.
pub const MODELS_MOUNT: &str = "/models";
/// Epoch granularity: guest code yields (and deadlines are checked) every tick.
const TICK: Duration = Duration::from_millis(10);
/// Bytes of guest stderr kept per instance (panic messages end up in error reports).
const STDERR_CAPACITY: usize = 64 * 1024;
/// Longest guest error text passed on; the rest is cut and marked.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Handles (WASI streams, pollables, wasi-nn tensors...) an instance may hold at once.
const MAX_HANDLES: usize = 4096;
/// What one entry of a store's handle table costs the host, at most (the value it holds is
/// charged by whoever puts it there).
const HANDLE_ENTRY_BYTES: usize = 64;
/// What every request's account holds from the start: the WASI context's bounded state (its
/// stderr pipe, its handle table full).
const WASI_RESERVE: u64 = (STDERR_CAPACITY + MAX_HANDLES * HANDLE_ENTRY_BYTES) as u64;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Load(#[from] CacheError),
    #[error("guest could not be linked or instantiated (does it export qa:extractive/qa@0.3.0, @0.2.0 or @0.1.0?): {0}")]
    Instantiate(String),
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
    BadAnswer(String),
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

/// Per-store state: WASI, wasi-nn and the limiter.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    nn: NnState,
    /// Every byte the host holds because of this store's guest.
    account: Account,
    limits: InstanceLimits,
    stderr: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn nn_view(state: &mut HostState) -> NnView<'_> {
    NnView { state: &mut state.nn, table: &mut state.table, account: &mut state.account }
}

/// A model's pre-initialized guest, once [`prepare`] made it.
enum Prepared {
    Running,
    Ready(Linked<HostState>),
    /// Not retried for this model version; requests run on fresh, unprepared instances.
    Failed,
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
    /// Model (name, version) → its pre-initialized guest.
    prepared: Mutex<HashMap<(String, String), Prepared>>,
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
        let wasm: Arc<[u8]> = std::fs::read(wasm_path).map_err(|source| CacheError::Read { path: wasm_path.to_path_buf(), source })?.into();
        let engine = Engine::new(&runtime_config(&settings)).map_err(|e| GuestError::Instantiate(format!("{e:#}")))?;
        let (component, origin) = {
            let (engine, artifacts, wasm, path) = (engine.clone(), artifacts.clone(), wasm.clone(), wasm_path.to_path_buf());
            tokio::task::spawn_blocking(move || artifacts.load_guest(&engine, &path, &wasm))
                .await
                .map_err(|e| GuestError::Instantiate(format!("compiling: {e}")))??
        };
        let version = Version::of(&engine, &component)
            .ok_or_else(|| GuestError::Instantiate(format!("it exports none of {}", Version::known_exports())))?;
        let linker = Self::linker(&engine)?;
        let base = Self::link(&linker, version, &component)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())
            .map_err(|e| GuestError::Instantiate(format!("starting the deadline timer thread: {e}")))?;
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
            prepared: Mutex::new(HashMap::new()),
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

    fn linker(engine: &Engine) -> Result<Linker<HostState>, GuestError> {
        let mut linker: Linker<HostState> = Linker::new(engine);
        let err = |e: wasmtime::Error| GuestError::Instantiate(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
        crate::nn::wit::add_to_linker(&mut linker, nn_view).map_err(err)?;
        Ok(linker)
    }

    fn link(linker: &Linker<HostState>, version: Version, component: &Component) -> Result<Linked<HostState>, GuestError> {
        let pre = linker.instantiate_pre(component).map_err(|e| GuestError::Instantiate(format!("{e:#}")))?;
        Linked::new(version, pre).map_err(|e| GuestError::Instantiate(format!("{e:#}")))
    }

    /// Which contract the guest speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// A store for one call: WASI with only one model's directory mounted (`mount`: its name
    /// and directory), the call's wasi-nn state, the instance limits, and the deadline.
    fn store(&self, mount: Option<(&str, &Path)>, nn: NnState, deadline: Duration) -> Result<Store<HostState>, GuestError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone()).allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        kernel_seeded_random(&mut wasi)
            .map_err(|e| GuestError::Instantiate(format!("no randomness from the kernel for the guest: {e}")))?;
        if let Some((name, dir)) = mount {
            wasi.preopened_dir(dir, format!("{MODELS_MOUNT}/{name}"), FsPerms::ReadOnly)
                .map_err(|e| GuestError::Mount { path: dir.to_path_buf(), reason: format!("{e:#}") })?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let limits = InstanceLimits::new(self.settings.memory_bytes, self.settings.memory_total.clone());
        let mut account = Account::new(self.settings.nn.max_host_bytes, self.settings.memory_total.clone());
        account.charge(WASI_RESERVE, "the WASI context").map_err(|refused| self.over_budget(&refused))?;
        let state = HostState { wasi: wasi.build(), table, nn, account, limits, stderr };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        sync_hostcall_fuel(&mut store);
        // Guest code yields to the executor every tick (so the call's timeout can fire) and
        // traps once the deadline has passed.
        let until = Instant::now() + deadline;
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= until { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }

    /// Pre-initializes the guest for `model` (once per model version) and says whether it is
    /// ready: its snapshot is found (shipped or cached) or, when `compile`, made now. A 0.1
    /// guest, or one whose snapshot failed, runs each request on a fresh, unprepared instance.
    pub async fn prepare(&self, model: &GuestModel, compile: bool) -> bool {
        if !self.version.prepares() {
            return false;
        }
        let key = (model.name.clone(), model.version.clone());
        {
            let Ok(mut prepared) = self.prepared.lock() else { return false };
            match prepared.get(&key) {
                Some(Prepared::Ready(_)) => return true,
                Some(Prepared::Failed | Prepared::Running) => return false,
                None => prepared.insert(key.clone(), Prepared::Running),
            };
        }
        let started = Instant::now();
        let state = match prepare::prepare(self, &model.name, &model.dir, compile).await {
            Ok(Some((component, origin))) => match Self::link(&self.linker, self.version, &component) {
                Ok(linked) => {
                    tracing::info!(model = %model.name, ?origin, ms = started.elapsed().as_millis() as u64, "guest prepared for model");
                    Some(Prepared::Ready(linked))
                }
                Err(error) => {
                    tracing::warn!(model = %model.name, %error, "the model's guest snapshot does not link; requests run unprepared");
                    Some(Prepared::Failed)
                }
            },
            // Neither shipped nor cached: a later `prepare` with `compile` makes it.
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(model = %model.name, %error, "guest not prepared; requests run unprepared");
                Some(Prepared::Failed)
            }
        };
        let Ok(mut prepared) = self.prepared.lock() else { return false };
        match state {
            Some(state) => {
                let ready = matches!(state, Prepared::Ready(_));
                prepared.insert(key, state);
                ready
            }
            None => {
                prepared.remove(&key);
                false
            }
        }
    }

    /// Whether `model`'s snapshot is ready, once any `prepare` making it (in the background,
    /// say) has finished.
    pub async fn wait_prepared(&self, model: &GuestModel) -> bool {
        let key = (model.name.clone(), model.version.clone());
        loop {
            let ready = match self.prepared.lock() {
                Ok(prepared) => match prepared.get(&key) {
                    Some(Prepared::Running) => None,
                    Some(Prepared::Ready(_)) => Some(true),
                    Some(Prepared::Failed) | None => Some(false),
                },
                Err(_) => Some(false),
            };
            match ready {
                Some(ready) => return ready,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Makes `model`'s snapshot in the background, when settings allow and it is not made or
    /// being made.
    pub fn prepare_in_background(self: &Arc<Self>, model: &GuestModel) {
        let known = self.prepared.lock().is_ok_and(|p| p.contains_key(&(model.name.clone(), model.version.clone())));
        if self.version.prepares() && self.settings.compile_snapshots && !known {
            let (this, model) = (self.clone(), model.clone());
            tokio::spawn(async move { this.prepare(&model, true).await });
        }
    }

    /// Writes beside the guest what `qa-host compile-guest` ships for a deployment: the
    /// instrumented guest, and the snapshot of each of `models` (name, directory), compiled
    /// for this engine (signed with `key` when given). Returns the paths written.
    pub async fn ship_snapshots(
        &self,
        models: &[(String, PathBuf)],
        key: Option<&[u8]>,
        target: &Engine,
    ) -> Result<Vec<PathBuf>, GuestError> {
        let mut written = Vec::new();
        if !self.version.prepares() {
            return Ok(written);
        }
        let instrumented = prepare::instrumented_wasm(&self.wasm).map_err(GuestError::Instantiate)?;
        written.push(cache::write_shipped(target, &self.wasm_path, &self.wasm, Some(prepare::INSTRUMENTED), &instrumented, key)?);
        for (name, dir) in models {
            // Snapshots are made here (running wasm) and compiled for the target.
            let kind = prepare::shipped_kind(self, name, dir)?;
            let snapshot = prepare::snapshot(self, name, dir).await?;
            written.push(cache::write_shipped(target, &self.wasm_path, &self.wasm, Some(&kind), &snapshot, key)?);
        }
        Ok(written)
    }

    /// The instance template for `model`: its snapshot if ready, else the plain guest.
    fn template(&self, model: &GuestModel) -> (Linked<HostState>, bool) {
        let prepared = self.prepared.lock().ok().and_then(|p| match p.get(&(model.name.clone(), model.version.clone())) {
            Some(Prepared::Ready(linked)) => Some(linked.clone()),
            _ => None,
        });
        match prepared {
            Some(linked) => (linked, true),
            None => (self.base.clone(), false),
        }
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
        answers::check(&response, context, options.top_k).map_err(GuestError::BadAnswer)?;
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
            return Err(GuestError::BadAnswer(format!("{} results for {} questions", results.len(), questions.len())));
        }
        Ok(results
            .into_iter()
            .map(|result| {
                let response = result.map_err(|e| GuestError::Qa(e.bounded(MAX_ERROR_BYTES)))?;
                answers::check(&response, context, options.top_k).map_err(GuestError::BadAnswer)?;
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

    fn classify_trap(&self, store: &Store<HostState>, error: wasmtime::Error, deadline: Duration) -> GuestError {
        let state = store.data();
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return GuestError::Timeout(deadline);
        }
        if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
            return GuestError::Busy(self.settings.instances);
        }
        if state.limits.refused {
            let own = self.settings.memory_bytes.min(self.settings.memory_total.limit().unwrap_or(usize::MAX));
            return GuestError::MemoryLimit { limit_mb: own >> 20 };
        }
        if state.limits.crowded {
            return GuestError::Crowded { limit_mb: self.settings.memory_total.limit().unwrap_or(usize::MAX) >> 20 };
        }
        // A refused charge traps where the import has no error to return (the tensor
        // constructor) and the trap says so; a refusal the guest got as a wasi-nn error and
        // went on from is not what stopped it.
        if let Some(refused) = state.account.refused()
            && error.chain().any(|cause| cause.to_string().contains(&refused.to_string()))
        {
            return self.over_budget(refused);
        }
        if is_hostcall_fuel_exhausted(&error) {
            return GuestError::HostBudget(format!(
                "it passed the host more in one call than the {} bytes its request had left of {} (QA_GUEST_HOST_MB)",
                store.hostcall_fuel(),
                state.account.budget()
            ));
        }
        let stderr = state.stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        let last_lines: Vec<&str> = stderr.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
        let message =
            if last_lines.is_empty() { format!("{error:#}") } else { format!("{error:#}; guest stderr: {}", last_lines.join(" | ")) };
        GuestError::Trap(bound_text(message, MAX_ERROR_BYTES))
    }
}

impl GuestRuntime {
    /// The error for a charge the request's account refused: its own budget, or the host-wide
    /// one other requests hold (which may come free).
    fn over_budget(&self, refused: &Refused) -> GuestError {
        if refused.crowded {
            GuestError::Crowded { limit_mb: self.settings.memory_total.limit().unwrap_or(usize::MAX) >> 20 }
        } else {
            GuestError::HostBudget(refused.to_string())
        }
    }
}

/// Sets the store's hostcall fuel (the most wasmtime copies into the host for one call or one
/// result, before the host sees it) to what the request's account has left.
fn sync_hostcall_fuel(store: &mut Store<HostState>) {
    let fuel = usize::try_from(store.data().account.remaining()).unwrap_or(usize::MAX);
    store.set_hostcall_fuel(fuel);
}

/// Whether `error` is wasmtime refusing to copy more into the host than the store's hostcall
/// fuel allows (its error type is private: its message is matched, and a test proves it).
fn is_hostcall_fuel_exhausted(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| cause.to_string().contains("fuel allocated for hostcalls has been exhausted"))
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Engine settings shared by compilation and execution (a precompiled artifact only loads
/// into an engine configured the same way).
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

/// The engine that compiles shipped artifacts (`compile-guest`): the one guests run on, for
/// this machine or, with `target` (a target triple such as `aarch64-unknown-linux-gnu`), for
/// the machine the artifacts will run on. Its artifacts load only where the running engine is
/// configured alike for that target; anywhere else they are ignored and the guest compiled.
pub fn ship_engine(settings: &GuestSettings, target: Option<&str>) -> Result<Engine, GuestError> {
    let mut config = runtime_config(settings);
    if let Some(target) = target {
        config.target(target).map_err(|e| GuestError::Instantiate(format!("target {target:?}: {e:#}")))?;
    }
    Engine::new(&config).map_err(|e| GuestError::Instantiate(format!("{e:#}")))
}

/// Guest instances that can exist at once (requests in flight, each with its own).
pub const DEFAULT_INSTANCES: u32 = 256;
/// Largest guest memory a snapshot is made of by default (`QA_GUEST_SNAPSHOT_MB`): the shipped
/// guest's is 8.4 MiB.
pub const DEFAULT_SNAPSHOT_BYTES: usize = 128 << 20;
/// Core instances, memories and tables a component may hold: `wasm-component-ld` makes a
/// handful of each.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const TABLES_PER_COMPONENT: u32 = 8;
/// Linear memory kept resident in a pooled slot between instances: reset in place instead of
/// unmapped, so the next request does not fault the pages in again. Covers the shipped
/// guest's 8.4 MiB snapshot and what a typical request allocates above it; memory above this
/// is unmapped as usual. Each slot that has served a request keeps the pages it touched, up to
/// this much, resident.
const KEEP_RESIDENT: usize = 16 << 20;

/// The engine that runs guests: [`engine_config`] plus the pooling allocator, which keeps a
/// slot (memory, tables, stack) per possible instance, so instantiating a request's fresh
/// instance reuses one instead of mapping new memory.
fn runtime_config(settings: &GuestSettings) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    let instances = settings.instances.max(1);
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances.saturating_mul(2))
        .max_memories_per_component(2)
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_stacks(instances)
        .max_memory_size(settings.memory_bytes)
        .linear_memory_keep_resident(KEEP_RESIDENT.min(settings.memory_bytes))
        .table_keep_resident(1 << 20)
        // With `PAGEMAP_SCAN` (Linux 6.7+) only the pages a request wrote are reset, in place,
        // in at most 32 contiguous runs (the rest is unmapped and faulted back in later); the
        // shipped guest allocates above its snapshot (`guest/src/heap.rs`), so its writes are a
        // few runs: measured 0 page faults a request and 0.15 ms to reset. Without the ioctl
        // (older kernels), the first `KEEP_RESIDENT` bytes are copied back from the snapshot
        // (0.8-0.9 ms for the shipped guest's 8.4 MiB), also without faults.
        .pagemap_scan(Enabled::Auto);
    let mut config = engine_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Gives a store's WASI context random sources seeded from the kernel now (one `getrandom` each),
/// in place of wasmtime-wasi's default, which derives them from the thread's `ThreadRng`: a
/// generator a SnapStart snapshot freezes, whose state every restored environment would share
/// (rand documents that it is not reseeded on restore and recommends `SysRng`).
fn kernel_seeded_random(wasi: &mut WasiCtxBuilder) -> Result<(), rand::rngs::SysError> {
    use rand::{SeedableRng, TryRng};
    let kernel = &mut rand::rngs::SysRng;
    let seed = u128::from(kernel.try_next_u64()?) << 64 | u128::from(kernel.try_next_u64()?);
    wasi.secure_random(rand::rngs::StdRng::try_from_rng(kernel)?)
        .insecure_random(rand::rngs::SmallRng::try_from_rng(kernel)?)
        .insecure_random_seed(seed);
    Ok(())
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
