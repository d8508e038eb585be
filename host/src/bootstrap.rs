//! The composition root: builds every part of the host once, from the configuration read at
//! start ([`HostConfig`]), and hands the request path ([`QaService`]) its parts. Guests in S3
//! are fetched here, models are catalogued, the serving guest and any candidate are loaded,
//! and ONNX Runtime is sized to the CPU share; nothing here runs per request.

use crate::config::HostConfig;
use crate::guest::{Artifacts, FetchError, GuestError, GuestRuntime, GuestSettings, LocalGuest, SwappableGuest};
use crate::model_cache::{LoadedModel, ModelCache, OnLoad};
use crate::models::ModelCatalog;
use crate::nn::onnx::OnnxBackend;
use crate::nn::{NnError, init_onnx_runtime};
use crate::rollout::{Rollout, RolloutSettings};
use crate::service::QaService;
use crate::telemetry::emf::Metrics;
use crate::telemetry::prom::PromMetrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    OnnxRuntime(#[from] NnError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A guest in S3 (`setting`) could not be fetched.
    #[error("{setting}={source}")]
    GuestFetch {
        setting: &'static str,
        #[source]
        source: FetchError,
    },
    #[error("no models found in {0} (each model is a directory with model.onnx, tokenizer.json, config.json)")]
    NoModels(String),
    #[error("the Prometheus metrics could not be set up: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The host, started from `config`: ONNX Runtime loaded, the guests fetched (from S3 when
/// they live there) and loaded, the models catalogued (loaded on first use, or by
/// [`QaService::preload`]).
pub async fn start(config: &HostConfig) -> Result<QaService, StartError> {
    init_onnx_runtime(config.onnxruntime.as_deref(), &config.session)?;
    log_inference_plan(config);
    let mut catalog = ModelCatalog::build(&config.models_dir, &config.manifest, config.s3.clone());
    catalog.set_default(config.default_model.clone());
    if catalog.names().next().is_none() {
        return Err(StartError::NoModels(config.models_dir.display().to_string()));
    }
    // One set of guest settings, so every guest of this service (serving, swapped in,
    // candidate) takes from one memory budget.
    let settings = config.guest_settings();
    let artifacts = Artifacts::from_env(&config.cache_dir).with_cache_limit(config.cache_bytes);
    let local =
        config.guest_wasm.fetch(&config.s3, "_guest").await.map_err(|source| StartError::GuestFetch { setting: "QA_GUEST", source })?;
    let guest = GuestRuntime::load(&local.path, artifacts.clone(), settings.clone()).await?;
    tracing::info!(origin = ?guest.origin, ms = guest.load_time.as_millis() as u64, guest = %local.path.display(), "guest ready");
    let mut s3_guests = local.s3.iter().map(|(source, _)| source.connector().clone()).collect::<Vec<_>>();
    let guest = SwappableGuest::new(guest, local, artifacts.clone(), settings.clone(), config.guest_ttl);
    let prom = Arc::new(PromMetrics::new()?);
    let rollout = match &config.rollout {
        Some(rollout) => {
            let candidate = rollout
                .candidate
                .fetch(&config.s3, "_candidate")
                .await
                .map_err(|source| StartError::GuestFetch { setting: rollout.setting(), source })?;
            s3_guests.extend(candidate.s3.iter().map(|(source, _)| source.connector().clone()));
            let metrics = Metrics::new(&config.telemetry);
            start_rollout(rollout, candidate, &guest, artifacts, settings, config.guest_ttl, prom.clone(), metrics).await
        }
        None => None,
    };
    let s3 = catalog.s3_connector().cloned().into_iter().chain(s3_guests).collect();
    let backend = OnnxBackend { settings: config.session };
    let budget = config.model_cache_mb.map(|mb| mb << 20);
    let models = ModelCache::new(catalog, backend, budget, config.model_ttl, Box::new(PrepareGuest(guest.clone())));
    Ok(QaService {
        models: Arc::new(models),
        guest,
        guest_deadline: config.guest_deadline,
        compile_snapshots: config.compile_snapshots,
        max_windows: config.max_windows,
        rollout,
        prom,
        s3,
        metrics: Metrics::new(&config.telemetry),
    })
}

/// Says once, at start, how inference was sized: the CPU share found and where from, and the
/// threads, sessions and spinning chosen (from the share unless a setting overrode them).
fn log_inference_plan(config: &HostConfig) {
    let session = &config.session;
    tracing::info!(
        cpu_share = (config.cpu.cpus * 1000.0).round() / 1000.0,
        share_from = %config.cpu.describe(),
        visible_cpus = config.cpu.visible,
        threads = session.intra_threads,
        sessions_per_model = session.sessions,
        spinning = session.spinning,
        "inference sized to the CPU share"
    );
}

/// The guest prepared for each model version the cache loads: a snapshot shipped or cached
/// for it is picked up now (a deserialization); one to compile is made in the background.
struct PrepareGuest(Arc<SwappableGuest>);

impl OnLoad for PrepareGuest {
    fn loaded<'a>(&'a self, name: &'a str, model: &'a LoadedModel) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let guest = self.0.current();
            let model = model.guest_model(name);
            if !guest.prepare(&model, false).await {
                guest.prepare_in_background(&model);
            }
        })
    }
}

/// The candidate guest loaded beside the serving one; a candidate that does not load is
/// logged and left out (the serving guest serves everything) until the host restarts.
#[allow(clippy::too_many_arguments)]
async fn start_rollout(
    settings: &RolloutSettings,
    candidate: LocalGuest,
    serving: &Arc<SwappableGuest>,
    artifacts: Artifacts,
    guest: GuestSettings,
    ttl: Duration,
    prom: Arc<PromMetrics>,
    metrics: Metrics,
) -> Option<Arc<Rollout>> {
    match GuestRuntime::load(&candidate.path, artifacts.clone(), guest.clone()).await {
        Ok(runtime) => {
            tracing::info!(candidate = %runtime.id, serving = %serving.current().id, percent = settings.percent, setting = settings.setting(), "candidate guest ready");
            let candidate = SwappableGuest::new(runtime, candidate, artifacts, guest, ttl);
            Some(Arc::new(Rollout::new(serving.clone(), candidate, settings, metrics, prom)))
        }
        Err(error) => {
            tracing::error!(setting = settings.setting(), guest = %settings.candidate, %error, "candidate guest rejected; the serving guest takes every request");
            None
        }
    }
}
