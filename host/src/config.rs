//! Where the host finds its parts, from flags and environment variables.

use crate::models::S3Settings;
use crate::models::manifest::{self, ManifestError};
use crate::nn::NnLimits;
use crate::nn::onnx::SessionSettings;
use crate::server::ServeLimits;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Windows one request may run by default: about 5 s of inference on a 2-core x86-64 machine
/// (about 20 ms a 384-token window), and about 270 KB of English text at the default window
/// and stride.
pub const DEFAULT_MAX_WINDOWS: u32 = 256;

/// Everything [`crate::service::QaService`] needs to start.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Directory of model directories (`<dir>/<name>/{model.onnx,tokenizer.json,config.json}`).
    pub models_dir: PathBuf,
    /// Model used when a request names none.
    pub default_model: Option<String>,
    /// The guest component (`.wasm`): a local path, or the local copy of `guest_s3`.
    pub guest_wasm: PathBuf,
    /// The guest's S3 object when `QA_GUEST` is an `s3://bucket/key` URI, with the version
    /// fetched at start-up (see [`crate::service::resolve_guest`]).
    pub guest_s3: Option<(std::sync::Arc<crate::models::S3Source>, String)>,
    /// Where compiled guests are cached (must be writable; `/tmp` on Lambda).
    pub cache_dir: PathBuf,
    /// `libonnxruntime.so`; `None` searches the documented places.
    pub onnxruntime: Option<PathBuf>,
    /// How long the guest file is trusted before it is checked for a replacement.
    pub guest_ttl: Duration,
    /// Wall-clock budget of one guest call.
    pub guest_deadline: Duration,
    /// Cap on all linear memories of one guest instance together.
    pub guest_memory_bytes: usize,
    /// What a guest may make the host hold through wasi-nn (`QA_GUEST_NN_ELEMENTS`,
    /// `QA_GUEST_NN_MB`).
    pub guest_nn: NnLimits,
    /// Guest instances that can exist at once (`QA_GUEST_INSTANCES`).
    pub guest_instances: u32,
    /// Windows one request may run inference on, all its questions together
    /// (`QA_MAX_WINDOWS`): a context that needs more is refused (413 `too_many_windows`).
    pub max_windows: u32,
    /// Whether the guest's per-model snapshots are compiled when none was shipped or cached
    /// (off for one-shot commands, which would not live to use them).
    pub compile_snapshots: bool,
    /// How ONNX Runtime sessions are built (`QA_INFERENCE_THREADS`, `QA_ORT_ARENA`).
    pub session: SessionSettings,
    /// Models to load at start-up, outside any request (`QA_PRELOAD=nlp1,nlp2`).
    pub preload: Vec<String>,
    /// Budget in MiB for models loaded on demand (`QA_MODEL_CACHE_MB`); unbounded if unset.
    pub model_cache_mb: Option<u64>,
    /// Models named by `QA_MODELS` and `QA_MODELS_FILE` (see [`crate::models::manifest`]).
    pub manifest: Vec<manifest::Entry>,
    /// How long a loaded model is trusted before its source is asked for changes.
    pub model_ttl: Duration,
    /// S3 download settings (cache under `QA_MODEL_CACHE_DIR`).
    pub s3: S3Settings,
    /// What clients can make `qa-host serve` hold (`QA_SERVE_*`).
    pub serve: ServeLimits,
}

impl HostConfig {
    /// Defaults: models in `./models`, the guest next to the executable or in the cargo
    /// target directory, the cache under the system temporary directory.
    /// Reads the environment; only a malformed model manifest is an error.
    pub fn from_env() -> Result<Self, ManifestError> {
        let env_path = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        let guest_wasm = env_path("QA_GUEST").unwrap_or_else(|| default_guest(exe_dir.as_deref()));
        let mut manifest = manifest::parse_env(&std::env::var("QA_MODELS").unwrap_or_default())?;
        if let Some(path) = env_path("QA_MODELS_FILE") {
            let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::new(format!("{}: {e}", path.display())))?;
            manifest.extend(manifest::parse_file(&text)?);
        }
        let mut s3 = S3Settings::default();
        if let Some(dir) = env_path("QA_MODEL_CACHE_DIR") {
            s3.cache_root = dir;
        }
        if let Some(mb) = env_number::<u64>("QA_TMP_RESERVE_MB") {
            s3.reserve_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(ms) = env_number::<u64>("QA_S3_ATTEMPT_TIMEOUT_MS").filter(|&ms| ms > 0) {
            s3.attempt_timeout = Duration::from_millis(ms);
        }
        if let Some(attempts) = env_number::<u32>("QA_S3_MAX_ATTEMPTS").filter(|&n| n > 0) {
            s3.max_attempts = attempts;
        }
        let guest_deadline = Duration::from_millis(env_number("QA_GUEST_DEADLINE_MS").unwrap_or(30_000));
        let serve = {
            let defaults = ServeLimits::for_deadline(guest_deadline);
            let millis = |key: &str| env_number::<u64>(key).filter(|&ms| ms > 0).map(Duration::from_millis);
            ServeLimits {
                header_timeout: millis("QA_SERVE_HEADER_TIMEOUT_MS").unwrap_or(defaults.header_timeout),
                request_timeout: millis("QA_SERVE_REQUEST_TIMEOUT_MS").unwrap_or(defaults.request_timeout),
                max_requests: env_number("QA_SERVE_MAX_REQUESTS").filter(|&n| n > 0).unwrap_or(defaults.max_requests),
                max_connections: env_number("QA_SERVE_MAX_CONNECTIONS").filter(|&n| n > 0).unwrap_or(defaults.max_connections),
            }
        };
        Ok(Self {
            models_dir: env_path("QA_MODELS_DIR").unwrap_or_else(default_models_dir),
            default_model: std::env::var("QA_DEFAULT_MODEL").ok().filter(|v| !v.is_empty()),
            guest_wasm,
            guest_s3: None,
            cache_dir: env_path("QA_CACHE_DIR").unwrap_or_else(|| std::env::temp_dir().join("qa-host")),
            onnxruntime: env_path("ORT_DYLIB_PATH"),
            guest_deadline,
            guest_ttl: Duration::from_secs(env_number("QA_GUEST_TTL_SECS").unwrap_or(60)),
            guest_memory_bytes: env_number("QA_GUEST_MEMORY_MB").unwrap_or(512) << 20,
            compile_snapshots: true,
            max_windows: env_number("QA_MAX_WINDOWS").unwrap_or(DEFAULT_MAX_WINDOWS),
            guest_instances: env_number("QA_GUEST_INSTANCES").unwrap_or(crate::guest::DEFAULT_INSTANCES),
            guest_nn: {
                let defaults = NnLimits::default();
                NnLimits {
                    max_input_elements: env_number("QA_GUEST_NN_ELEMENTS").unwrap_or(defaults.max_input_elements),
                    max_tensor_bytes: env_number::<u64>("QA_GUEST_NN_MB").map_or(defaults.max_tensor_bytes, |mb| mb << 20),
                    ..defaults
                }
            },
            session: SessionSettings {
                intra_threads: env_number("QA_INFERENCE_THREADS").unwrap_or(0),
                memory_arena: !std::env::var("QA_ORT_ARENA")
                    .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off")),
            },
            preload: std::env::var("QA_PRELOAD")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect(),
            model_cache_mb: env_number("QA_MODEL_CACHE_MB"),
            manifest,
            model_ttl: Duration::from_secs(env_number("QA_MODEL_TTL_SECS").unwrap_or(60)),
            s3,
            serve,
        })
    }
}

impl HostConfig {
    /// How guests run, from these settings.
    pub fn guest_settings(&self) -> crate::guest::GuestSettings {
        crate::guest::GuestSettings {
            deadline: self.guest_deadline,
            memory_bytes: self.guest_memory_bytes,
            nn: self.guest_nn,
            instances: self.guest_instances,
            compile_snapshots: self.compile_snapshots,
        }
    }
}

/// `$LAMBDA_TASK_ROOT/models` inside Lambda (the image layout), else `./models`.
fn default_models_dir() -> PathBuf {
    std::env::var_os("LAMBDA_TASK_ROOT").map_or_else(|| PathBuf::from("models"), |root| PathBuf::from(root).join("models"))
}

fn env_number<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

/// `qa-guest.wasm` beside the executable (the container image layout), else the cargo
/// build output when run from the repository.
fn default_guest(exe_dir: Option<&Path>) -> PathBuf {
    let name = "qa-guest.wasm";
    let candidates = exe_dir.into_iter().flat_map(|dir| [dir.join(name), dir.join("../wasm32-wasip2/release").join(name)]);
    candidates
        .chain([PathBuf::from("target/wasm32-wasip2/release").join(name)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
