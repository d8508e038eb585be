//! SnapStart: the init phase runs once, when a version is published, and Lambda restores every
//! new execution environment from a snapshot of it. The runtime crate calls these hooks around
//! the snapshot (`AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`; never otherwise).
//!
//! What the snapshot holds, and so what every restored environment shares with its siblings:
//! the compiled guest and its per-model snapshots, the loaded models and their ONNX Runtime
//! sessions, the configuration, and the files under `/tmp` (the compiled-guest cache, S3
//! models). All of it is read-only data the same for every environment of the version; no
//! request has run yet, so it holds nothing of any caller. What must not be shared is dropped
//! before the snapshot and made anew after the restore, before the first invocation: the S3
//! clients (credentials they resolved, their pooled connections). Randomness never comes from
//! a generator the snapshot holds ([`crate::guest`] seeds each request's from the kernel), and
//! the Runtime API client's connections are rebuilt by the runtime crate itself.

use crate::service::QaService;
use crate::telemetry::layer::TelemetryLayer;
use lambda_runtime::{BoxFuture, Error, SnapStartResource};
use std::sync::Arc;
use std::time::Instant;

/// The service's part in the snapshot: [`QaService::before_snapshot`] and
/// [`QaService::after_restore`], and the restore's time for the first invocation's metrics.
pub struct Snapshot {
    pub service: Arc<QaService>,
    pub telemetry: TelemetryLayer,
}

impl SnapStartResource for Snapshot {
    fn before_snapshot(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.service.before_snapshot().await;
            Ok(())
        })
    }

    fn after_restore(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let started = Instant::now();
            self.service.after_restore().await;
            self.telemetry.restored(started.elapsed());
            tracing::info!(ms = started.elapsed().as_secs_f64() * 1e3, "restored from the snapshot; serving");
            Ok(())
        })
    }
}
