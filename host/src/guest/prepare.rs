//! Pre-initialization per model (Wizer, `wasmtime-wizer`): the guest's `prepare(model)` runs
//! once in an instance of the guest instrumented with state accessors; its memories and
//! globals are then written into a new component as initial state. Every request for that
//! model instantiates the new component: it starts with the model's tokenizer parsed, and
//! with nothing any request did.
//!
//! The result is compiled once. It is found, in this order: shipped beside the guest by
//! `qa-host compile-guest` (for the models in the image), in the compile cache, or made now.
//! Both are keyed by the engine, the guest, the model's name and the bytes of its
//! `tokenizer.json` and `config.json`.

use super::contract::Runner;
use super::{GuestError, GuestRuntime, Origin};
use crate::nn::NnState;
use std::path::Path;
use std::time::Instant;
use wasmtime::Store;
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

/// The kind name of the instrumented guest's shipped artifact.
pub(super) const INSTRUMENTED: &str = "instrumented";

/// The kind name of a model's shipped snapshot: from what the snapshot is made of (the guest,
/// the model's name and the files `prepare` reads), for any engine, so one compiled for
/// another machine (`compile-guest --target`) is found there by name.
pub(super) fn shipped_kind(runtime: &GuestRuntime, name: &str, dir: &Path) -> Result<String, GuestError> {
    let (tokenizer, config) = model_files(name, dir)?;
    Ok(format!("prepared-{}", super::artifacts::content_key(&[b"prepared-v1", &runtime.wasm, name.as_bytes(), &tokenizer, &config])))
}

/// The compile cache's key for a model's snapshot: what it is made of, and this engine.
fn cache_key(runtime: &GuestRuntime, name: &str, dir: &Path) -> Result<String, GuestError> {
    let (tokenizer, config) = model_files(name, dir)?;
    Ok(runtime.artifacts.key(&runtime.engine, &[b"prepared-v1", &runtime.wasm, name.as_bytes(), &tokenizer, &config]))
}

/// The model files a snapshot depends on: `tokenizer.json` and `config.json`.
fn model_files(name: &str, dir: &Path) -> Result<(Vec<u8>, Vec<u8>), GuestError> {
    let read = |file: &str| {
        std::fs::read(dir.join(file)).map_err(|e| GuestError::Prepare { model: name.to_string(), reason: format!("{file}: {e}") })
    };
    Ok((read("tokenizer.json")?, read("config.json")?))
}

/// The model's snapshot if it was shipped or cached (milliseconds); else, when `compile`, made
/// now (seconds: the instrumented guest's and the snapshot's compiles).
pub(super) async fn prepare(
    runtime: &GuestRuntime,
    name: &str,
    dir: &Path,
    compile: bool,
) -> Result<Option<(Component, Origin)>, GuestError> {
    if let Some(found) =
        runtime.artifacts.shipped(&runtime.engine, &runtime.wasm_path, &runtime.wasm, Some(&shipped_kind(runtime, name, dir)?))
    {
        return Ok(Some(found));
    }
    let key = cache_key(runtime, name, dir)?;
    if let Some(component) = runtime.artifacts.cached(&runtime.engine, &key) {
        return Ok(Some((component, Origin::Cached)));
    }
    if !compile {
        return Ok(None);
    }
    let started = Instant::now();
    let bytes = snapshot(runtime, name, dir).await?;
    let snapshot_ms = started.elapsed().as_millis() as u64;
    let (engine, artifacts, what) = (runtime.engine.clone(), runtime.artifacts.clone(), Path::new(name).to_path_buf());
    let component = tokio::task::spawn_blocking(move || artifacts.compile_into_cache(&engine, &bytes, &key, &what))
        .await
        .map_err(|e| GuestError::Prepare { model: name.to_string(), reason: format!("compiling the snapshot: {e}") })??;
    tracing::info!(model = name, snapshot_ms, total_ms = started.elapsed().as_millis() as u64, "guest snapshot compiled");
    Ok(Some((component, Origin::Compiled)))
}

/// The instrumented guest: shipped beside the guest, or compiled (and cached) once.
async fn instrumented(runtime: &GuestRuntime, bytes: Vec<u8>) -> Result<&Component, GuestError> {
    runtime
        .instrumented
        .get_or_try_init(|| async {
            if let Some((component, _)) = runtime.artifacts.shipped(&runtime.engine, &runtime.wasm_path, &runtime.wasm, Some(INSTRUMENTED))
            {
                return Ok(component);
            }
            let (engine, artifacts) = (runtime.engine.clone(), runtime.artifacts.clone());
            let what = runtime.wasm_path.with_extension("instrumented.wasm");
            tokio::task::spawn_blocking(move || artifacts.load_or_compile(&engine, &bytes, &what).map(|(c, _)| c))
                .await
                .map_err(GuestError::Compiler)?
                .map_err(GuestError::from)
        })
        .await
}

/// The instrumented guest's wasm (what `qa-host compile-guest` ships precompiled).
pub(super) fn instrumented_wasm(wasm: &[u8]) -> Result<Vec<u8>, String> {
    Wizer::new().instrument_component(wasm).map(|(_, bytes)| bytes).map_err(|e| format!("instrumenting: {e:#}"))
}

/// Runs the guest's `prepare(name)` in an instrumented instance that mounts `dir` and returns
/// the pre-initialized component's wasm.
pub(super) async fn snapshot(runtime: &GuestRuntime, name: &str, dir: &Path) -> Result<Vec<u8>, GuestError> {
    let failed = |reason: String| GuestError::Prepare { model: name.to_string(), reason };
    let wizer = Wizer::new();
    let (context, instrumented_bytes) = wizer.instrument_component(&runtime.wasm).map_err(|e| failed(format!("instrumenting: {e:#}")))?;
    let instrumented = instrumented(runtime, instrumented_bytes).await?;

    // The snapshotted instance sees what a request for this model sees, except a graph: the
    // guest reads files here, it does not infer.
    let deadline = runtime.settings.deadline;
    let mut store = runtime.store(Some((name, dir)), NnState::new(None, runtime.settings.nn), deadline)?;
    let initialized = tokio::time::timeout(deadline, async {
        let instance = runtime.linker.instantiate_async(&mut store, instrumented).await?;
        let runner = Runner::of_instance(runtime.version, &mut store, &instance)?;
        let prepared = runner.prepare(&mut store, name).await?;
        Ok::<_, wasmtime::Error>((instance, prepared))
    })
    .await
    .map_err(|_| failed(format!("prepare ran past {deadline:?}")))?;
    // Said as a request's failure is (past the deadline, over the memory limit, a trap with
    // the guest's last stderr lines), and as bounded.
    let (instance, prepared) = initialized.map_err(|e| failed(runtime.classify_trap(&store, e, deadline).to_string()))?;
    prepared.map_err(|e| failed(format!("the guest's prepare failed: {}", crate::boundary::bound_text(e.message().to_string(), 512))))?;
    // The snapshot holds the instance's memory: refused before it is copied out when larger
    // than snapshots may be.
    let memory = store.data().limits.memory_bytes();
    if memory > runtime.settings.snapshot_bytes {
        return Err(failed(format!(
            "its memory after prepare is {} MiB; snapshots are limited to {} MiB (QA_GUEST_SNAPSHOT_MB)",
            memory >> 20,
            runtime.settings.snapshot_bytes >> 20
        )));
    }

    let mut state = Snapshotting { store: &mut store, instance, failure: None };
    let snapshot = wizer.snapshot_component(&context, &mut state).await.map_err(|e| failed(format!("snapshot: {e:#}")))?;
    match state.failure {
        Some(failure) => Err(failed(format!("reading the instance's state: {failure}"))),
        None => Ok(snapshot),
    }
}

/// Reads an instrumented instance's state for wizer through its accessor exports.
struct Snapshotting<'a, T: 'static> {
    store: &'a mut Store<T>,
    instance: Instance,
    /// The first accessor that could not be called (the trait has no error path).
    failure: Option<String>,
}

impl<T: Send> Snapshotting<'_, T> {
    async fn call<R: Lift + Send + Sync + 'static>(&mut self, instance: &str, func: &str) -> Option<R> {
        let outcome = async {
            let exported = self.instance.get_export_index(&mut *self.store, None, instance).ok_or("no accessor instance")?;
            let index = self.instance.get_export_index(&mut *self.store, Some(&exported), func).ok_or("no accessor")?;
            let typed = self.instance.get_typed_func::<(), (R,)>(&mut *self.store, index).map_err(|e| e.to_string())?;
            typed.call_async(&mut *self.store, ()).await.map(|(r,)| r).map_err(|e| e.to_string())
        }
        .await;
        outcome
            .map_err(|e: String| {
                self.failure.get_or_insert(format!("{instance}#{func}: {e}"));
            })
            .ok()
    }
}

impl<T: Send> ComponentInstanceState for Snapshotting<'_, T> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        if let Some(list) = self.call::<WasmList<u8>>(instance, func).await {
            contents(list.as_le_slice(&*self.store));
        } else {
            contents(&[]);
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call::<i32>(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call::<i64>(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).await.map(f32::to_bits).unwrap_or_default()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).await.map(f64::to_bits).unwrap_or_default()
    }
}
