//! Snapshots: the guest pre-initialized for each model version (its tokenizer parsed), which
//! requests instantiate from instead of the plain guest. Each model version is prepared once:
//! found shipped or cached, or made ([`super::prepare`]) in the background; callers that need
//! it wait for the one preparation, woken when it ends.

use super::artifacts;
use super::contract::Linked;
use super::sandbox::HostState;
use super::{GuestError, GuestModel, GuestRuntime, engine, prepare};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;
use wasmtime::Engine;

/// A model's pre-initialized guest, once [`prepare`] made it.
enum Prepared {
    Running,
    Ready(Linked<HostState>),
    /// Not retried for this model version; requests run on fresh, unprepared instances.
    Failed,
}

/// Each model version's snapshot, and a wake-up for callers waiting on one being made.
#[derive(Default)]
pub(super) struct Snapshots {
    /// Model (name, version) → its pre-initialized guest.
    prepared: Mutex<HashMap<(String, String), Prepared>>,
    /// Woken whenever a preparation ends.
    ended: Notify,
}

impl GuestRuntime {
    /// Pre-initializes the guest for `model` (once per model version) and says whether it is
    /// ready: its snapshot is found (shipped or cached) or, when `compile`, made now. A 0.1
    /// guest, or one whose snapshot failed, runs each request on a fresh, unprepared instance.
    pub async fn prepare(&self, model: &GuestModel, compile: bool) -> bool {
        if !self.version.prepares() {
            return false;
        }
        let key = (model.name.clone(), model.version.clone());
        {
            let Ok(mut prepared) = self.snapshots.prepared.lock() else { return false };
            match prepared.get(&key) {
                Some(Prepared::Ready(_)) => return true,
                Some(Prepared::Failed | Prepared::Running) => return false,
                None => prepared.insert(key.clone(), Prepared::Running),
            };
        }
        let started = Instant::now();
        let state = match prepare::prepare(self, &model.name, &model.dir, compile).await {
            Ok(Some((component, origin))) => match engine::link(&self.linker, self.version, &component) {
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
        let ready = match self.snapshots.prepared.lock() {
            Ok(mut prepared) => match state {
                Some(state) => {
                    let ready = matches!(state, Prepared::Ready(_));
                    prepared.insert(key, state);
                    ready
                }
                None => {
                    prepared.remove(&key);
                    false
                }
            },
            Err(_) => false,
        };
        self.snapshots.ended.notify_waiters();
        ready
    }

    /// Whether `model`'s snapshot is ready, once any `prepare` making it (in the background,
    /// say) has finished.
    pub async fn wait_prepared(&self, model: &GuestModel) -> bool {
        let key = (model.name.clone(), model.version.clone());
        loop {
            // Registered before the state is read, so a preparation that ends in between
            // still wakes this caller.
            let ended = self.snapshots.ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            let ready = match self.snapshots.prepared.lock() {
                Ok(prepared) => match prepared.get(&key) {
                    Some(Prepared::Running) => None,
                    Some(Prepared::Ready(_)) => Some(true),
                    Some(Prepared::Failed) | None => Some(false),
                },
                Err(_) => Some(false),
            };
            match ready {
                Some(ready) => return ready,
                None => ended.await,
            }
        }
    }

    /// Makes `model`'s snapshot in the background, when settings allow and it is not made or
    /// being made.
    pub fn prepare_in_background(self: &Arc<Self>, model: &GuestModel) {
        let known = self.snapshots.prepared.lock().is_ok_and(|p| p.contains_key(&(model.name.clone(), model.version.clone())));
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
        let instrumented = prepare::instrumented_wasm(&self.wasm).map_err(GuestError::Instrument)?;
        written.push(artifacts::write_shipped(target, &self.wasm_path, &self.wasm, Some(prepare::INSTRUMENTED), &instrumented, key)?);
        for (name, dir) in models {
            // Snapshots are made here (running wasm) and compiled for the target.
            let kind = prepare::shipped_kind(self, name, dir)?;
            let snapshot = prepare::snapshot(self, name, dir).await?;
            written.push(artifacts::write_shipped(target, &self.wasm_path, &self.wasm, Some(&kind), &snapshot, key)?);
        }
        Ok(written)
    }

    /// The instance template for `model`: its snapshot if ready, else the plain guest.
    pub(super) fn template(&self, model: &GuestModel) -> (Linked<HostState>, bool) {
        let prepared = self.snapshots.prepared.lock().ok().and_then(|p| match p.get(&(model.name.clone(), model.version.clone())) {
            Some(Prepared::Ready(linked)) => Some(linked.clone()),
            _ => None,
        });
        match prepared {
            Some(linked) => (linked, true),
            None => (self.base.clone(), false),
        }
    }
}
