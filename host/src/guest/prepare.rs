//! Pre-initialization per model (Wizer, `wasmtime-wizer`): the guest's `prepare(model)` runs
//! once in an instance of the guest instrumented with state accessors; its memories and
//! globals are then written into a new component as initial state. Every request for that
//! model instantiates the new component: it starts with the model's tokenizer parsed, and
//! with nothing any request did.
//!
//! The result is compiled once and kept in the compile cache, keyed by the engine, the guest,
//! the model's name and the bytes of its `tokenizer.json` and `config.json`; a later start (or
//! another process on the same cache) deserializes it in milliseconds.

use super::contract::Runner;
use super::{GuestError, GuestModel, GuestRuntime, Origin};
use std::future::Future;
use std::path::Path;
use std::time::Instant;
use wasmtime::Store;
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

/// The pre-initialized guest for `model`, and whether it came from the cache.
pub(super) async fn prepare(runtime: &GuestRuntime, model: &GuestModel) -> Result<(Component, Origin), GuestError> {
    let failed = |reason: String| GuestError::Prepare { model: model.name.clone(), reason };
    let read = |name: &str| std::fs::read(model.dir.join(name)).map_err(|e| failed(format!("{name}: {e}")));
    let key = runtime
        .artifacts
        .key(&runtime.engine, &[b"prepared-v1", &runtime.wasm, model.name.as_bytes(), &read("tokenizer.json")?, &read("config.json")?]);
    if let Some(component) = runtime.artifacts.cached(&runtime.engine, &key) {
        return Ok((component, Origin::Cached));
    }

    let started = Instant::now();
    let wizer = Wizer::new();
    let (context, instrumented_bytes) = wizer.instrument_component(&runtime.wasm).map_err(|e| failed(format!("instrumenting: {e:#}")))?;
    let instrumented = runtime
        .instrumented
        .get_or_try_init(|| {
            let (engine, artifacts) = (runtime.engine.clone(), runtime.artifacts.clone());
            let path = runtime.wasm_path.with_extension("instrumented.wasm");
            async move {
                tokio::task::spawn_blocking(move || artifacts.load_or_compile(&engine, &instrumented_bytes, &path).map(|(c, _)| c))
                    .await
                    .map_err(|e| failed(format!("compiling the instrumented guest: {e}")))?
                    .map_err(|e| failed(e.to_string()))
            }
        })
        .await?;

    // The snapshotted instance sees what a request for this model sees, except a graph: the
    // guest reads files here, it does not infer.
    let deadline = runtime.limits.deadline;
    let mut store = runtime.store(Some(&GuestModel { graph: model.graph.clone(), ..model.clone() }), deadline)?;
    store.data_mut().nn = crate::nn::NnState::new(None, runtime.limits.nn);
    let initialized = tokio::time::timeout(deadline, async {
        let instance = runtime.linker.instantiate_async(&mut store, instrumented).await?;
        let runner = Runner::v2(&mut store, &instance)?;
        let prepared = runner.prepare(&mut store, &model.name).await?;
        Ok::<_, wasmtime::Error>((instance, prepared))
    })
    .await
    .map_err(|_| failed(format!("prepare ran past {deadline:?}")))?;
    let (instance, prepared) = initialized.map_err(|e| failed(format!("{e:#}")))?;
    prepared.map_err(|e| failed(format!("the guest's prepare failed: {}", super::bound_text(e.message().to_string(), 512))))?;

    let mut state = Snapshotting { store: &mut store, instance, failure: None };
    let snapshot = wizer.snapshot_component(&context, &mut state).await.map_err(|e| failed(format!("snapshot: {e:#}")))?;
    if let Some(failure) = state.failure {
        return Err(failed(format!("reading the instance's state: {failure}")));
    }
    let snapshot_ms = started.elapsed().as_millis() as u64;
    let (engine, artifacts, name) = (runtime.engine.clone(), runtime.artifacts.clone(), model.name.clone());
    let component = tokio::task::spawn_blocking(move || artifacts.compile_into_cache(&engine, &snapshot, &key, Path::new(&name)))
        .await
        .map_err(|e| failed(format!("compiling the prepared guest: {e}")))?
        .map_err(|e| failed(e.to_string()))?;
    tracing::info!(model = %model.name, snapshot_ms, total_ms = started.elapsed().as_millis() as u64, "guest snapshot compiled");
    Ok((component, Origin::Compiled))
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
    fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        async move {
            if let Some(list) = self.call::<WasmList<u8>>(instance, func).await {
                contents(list.as_le_slice(&*self.store));
            } else {
                contents(&[]);
            }
        }
    }

    fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> impl Future<Output = i32> + Send {
        async move { self.call::<i32>(instance, func).await.unwrap_or_default() }
    }

    fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> impl Future<Output = i64> + Send {
        async move { self.call::<i64>(instance, func).await.unwrap_or_default() }
    }

    fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> impl Future<Output = u32> + Send {
        async move { self.call::<f32>(instance, func).await.map(f32::to_bits).unwrap_or_default() }
    }

    fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> impl Future<Output = u64> + Send {
        async move { self.call::<f64>(instance, func).await.map(f64::to_bits).unwrap_or_default() }
    }
}
