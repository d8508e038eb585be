//! Where the host finds its parts, from flags and environment variables.

use crate::guest::GuestLocation;
use crate::models::S3Settings;
use crate::models::manifest::{self, ManifestError};
use crate::nn::NnLimits;
use crate::nn::cpu::{CpuShare, InferencePlan};
use crate::nn::onnx::SessionSettings;
use crate::rollout::{Mode, Policy, RolloutSettings};
use crate::telemetry::{LogFormat, TelemetryConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Windows one request may run by default: about 8 s of inference on a 2-core x86-64 machine
/// (about 31 ms a 384-token window, `bench/long_docs.py`), and about 300 KB of English text at
/// the default window and stride (200 KB of SQuAD paragraphs needs 167 windows).
pub const DEFAULT_MAX_WINDOWS: u32 = 256;

/// Every setting, read once at start ([`HostConfig::from_env`]); the host is built from it
/// (`crate::bootstrap`) and never changes it.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Directory of model directories (`<dir>/<name>/{model.onnx,tokenizer.json,config.json}`).
    pub models_dir: PathBuf,
    /// Model used when a request names none.
    pub default_model: Option<String>,
    /// The guest component (`.wasm`, `QA_GUEST`): a local path, or an S3 object fetched at
    /// start-up.
    pub guest_wasm: GuestLocation,
    /// Where compiled guests are cached (must be writable; `/tmp` on Lambda).
    pub cache_dir: PathBuf,
    /// Bytes the compiled-guest cache may hold (`QA_CACHE_MB`); the least recently used
    /// artifacts not in use are removed past it.
    pub cache_bytes: u64,
    /// `libonnxruntime.so`; `None` searches the documented places.
    pub onnxruntime: Option<PathBuf>,
    /// How long the guest file is trusted before it is checked for a replacement.
    pub guest_ttl: Duration,
    /// Wall-clock budget of one guest call.
    pub guest_deadline: Duration,
    /// Cap on all linear memories of one guest instance together.
    pub guest_memory_bytes: usize,
    /// What a guest may make the host hold (`QA_GUEST_NN_ELEMENTS`, `QA_GUEST_NN_MB`,
    /// `QA_GUEST_HOST_MB`).
    pub guest_nn: NnLimits,
    /// Largest guest memory a per-model snapshot is made of (`QA_GUEST_SNAPSHOT_MB`).
    pub guest_snapshot_bytes: usize,
    /// Guest instances that can exist at once (`QA_GUEST_INSTANCES`).
    pub guest_instances: u32,
    /// Linear memory all guest instances may hold together (`QA_GUEST_MEMORY_TOTAL_MB`);
    /// `None`: only each instance's own limit.
    pub guest_memory_total_bytes: Option<usize>,
    /// Windows one request may run inference on, all its questions together
    /// (`QA_MAX_WINDOWS`): a context that needs more is refused (413 `too_many_windows`).
    pub max_windows: u32,
    /// Whether the guest's per-model snapshots are compiled when none was shipped or cached
    /// (off for one-shot commands, which would not live to use them).
    pub compile_snapshots: bool,
    /// How ONNX Runtime runs (`QA_INFERENCE_THREADS`, `QA_INFERENCE_SPINNING`,
    /// `QA_INFERENCE_CONCURRENCY`, `QA_ORT_ARENA`); by default sized from `cpu`.
    pub session: SessionSettings,
    /// The CPU this process may use, found at start ([`CpuShare::probe`]).
    pub cpu: CpuShare,
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
    /// A candidate guest in shadow or canary mode (`QA_GUEST_SHADOW`, `QA_GUEST_CANARY`).
    pub rollout: Option<RolloutSettings>,
    /// What Lambda says about the execution environment, when running under it.
    pub lambda: Option<LambdaEnvironment>,
    /// Logging and metrics (`QA_LOG`, `QA_LOG_FORMAT`, the Powertools variables).
    pub telemetry: TelemetryConfig,
}

/// The execution environment as Lambda describes it in the bootstrap's environment
/// (present when `AWS_LAMBDA_RUNTIME_API` is set). The per-environment budgets' defaults are
/// sized from it ([`Budgets::for_environment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LambdaEnvironment {
    /// Invocations Lambda sends this environment at once (`AWS_LAMBDA_MAX_CONCURRENCY`, set
    /// under Lambda Managed Instances; 1 otherwise).
    pub max_concurrency: u32,
    /// The init phase runs before a SnapStart snapshot (`AWS_LAMBDA_INITIALIZATION_TYPE` is
    /// `snap-start`): environments are restored from it later.
    pub snap_start: bool,
    /// The function's memory in MB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_mb: Option<u64>,
    /// Lambda Managed Instances (`AWS_LAMBDA_MAX_CONCURRENCY` is set): the environment owns
    /// whole vCPUs, which its cgroup and affinity show, instead of a share sized by memory.
    pub managed_instances: bool,
}

impl LambdaEnvironment {
    /// The memory that sizes the CPU share: on demand, Lambda gives CPU in proportion to it.
    pub fn cpu_memory_mb(&self) -> Option<u64> {
        if self.managed_instances { None } else { self.memory_mb }
    }
}

/// The budgets of one execution environment that depend on how many invocations it serves
/// at once and on its CPU share: each is the default of its setting ([`HostConfig`] documents
/// which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    pub guest_instances: u32,
    pub guest_memory_total_mb: Option<u64>,
    /// ONNX Runtime's threads, spinning and sessions per model.
    pub inference: InferencePlan,
    pub model_downloads: usize,
}

impl Budgets {
    /// The defaults for `lambda` (`None`: not under Lambda) with the CPU `share`.
    ///
    /// With N invocations at once: N guest instances for the requests, up to N more for their
    /// shadow calls ([`crate::rollout::MAX_SHADOW_CALLS`] at most) and 2 for snapshots being
    /// made; guest memory in total half the function's memory (the other half holds the
    /// models' sessions, ONNX Runtime's buffers and the host); inference sized from the share
    /// ([`InferencePlan::for_share`]: threads for the share, a session per whole CPU up to N);
    /// 2 model downloads at once, up to 4 with 4 or more invocations (each already runs 4
    /// ranged GETs, so more only splits the bandwidth while holding 32 MiB of parts each).
    pub fn for_environment(lambda: Option<&LambdaEnvironment>, share: &CpuShare) -> Self {
        let Some(lambda) = lambda else {
            return Self {
                guest_instances: crate::guest::DEFAULT_INSTANCES,
                guest_memory_total_mb: None,
                inference: InferencePlan::for_share(share, None),
                model_downloads: 2,
            };
        };
        let n = lambda.max_concurrency.max(1);
        let shadows = u32::try_from(crate::rollout::MAX_SHADOW_CALLS).unwrap_or(u32::MAX).min(n);
        Self {
            guest_instances: n.saturating_add(shadows).saturating_add(2),
            guest_memory_total_mb: lambda.memory_mb.map(|mb| (mb / 2).max(1)),
            inference: InferencePlan::for_share(share, Some(n)),
            model_downloads: (n as usize).clamp(2, 4),
        }
    }
}

/// Why the configuration is unusable: start-up stops and says which setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{name}={value:?} is not {expected}")]
    BadSetting { name: &'static str, value: String, expected: &'static str },
    /// A well-formed value this build cannot serve (an `s3://` guest without the `s3` feature).
    #[error("{name}={value:?}: {reason}")]
    Unsupported { name: &'static str, value: String, reason: &'static str },
}

/// The environment, read through `lookup` (the process environment in [`HostConfig::from_env`],
/// a map in tests). Unset and empty settings take their defaults; a value that does not parse
/// is an error naming the setting, never silently replaced.
struct Settings<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Settings<F> {
    fn text(&self, name: &str) -> Option<String> {
        (self.lookup)(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.text(name).map(PathBuf::from)
    }

    /// A guest component: a path, or `s3://bucket/key`.
    fn guest(&self, name: &'static str) -> Result<Option<GuestLocation>, ConfigError> {
        let Some(value) = self.text(name) else { return Ok(None) };
        let location = value.parse().map_err(|expected| ConfigError::BadSetting { name, value: value.clone(), expected })?;
        if let GuestLocation::S3 { .. } = location {
            crate::models::s3_available().map_err(|reason| ConfigError::Unsupported { name, value, reason })?;
        }
        Ok(Some(location))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &'static str, expected: &'static str) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.text(name) else { return Ok(None) };
        value.parse().map(Some).map_err(|_| ConfigError::BadSetting { name, value, expected })
    }

    /// A whole number of at least 1.
    fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(
        &self,
        name: &'static str,
        unit: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        match self.parsed::<T>(name, unit)? {
            Some(v) if v < T::from(1) => Err(ConfigError::BadSetting { name, value: self.text(name).unwrap_or_default(), expected: unit }),
            other => Ok(other),
        }
    }

    fn millis(&self, name: &'static str) -> Result<Option<Duration>, ConfigError> {
        Ok(self.positive::<u64>(name, "a whole number of milliseconds, at least 1")?.map(Duration::from_millis))
    }

    /// A percentage, 0 to 100 (fractions allowed).
    fn percent(&self, name: &'static str) -> Result<Option<f64>, ConfigError> {
        const EXPECTED: &str = "a percentage from 0 to 100";
        match self.parsed::<f64>(name, EXPECTED)? {
            Some(p) if !(0.0..=100.0).contains(&p) => {
                Err(ConfigError::BadSetting { name, value: self.text(name).unwrap_or_default(), expected: EXPECTED })
            }
            other => Ok(other),
        }
    }

    fn switch(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.text(name) else { return Ok(None) };
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Ok(Some(true)),
            "0" | "false" | "off" | "no" => Ok(Some(false)),
            _ => Err(ConfigError::BadSetting { name, value, expected: "one of 1, 0, true, false, on, off" }),
        }
    }
}

impl HostConfig {
    /// Defaults: models in `./models`, the guest next to the executable or in the cargo
    /// target directory, the cache under the system temporary directory. Reads the process
    /// environment once; see [`ConfigError`] for what stops start-up.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The configuration from the settings `lookup` gives.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Settings { lookup };
        let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        let guest_wasm = env.guest("QA_GUEST")?.unwrap_or_else(|| GuestLocation::File(default_guest(exe_dir.as_deref())));
        let mut manifest = manifest::parse_env(&env.text("QA_MODELS").unwrap_or_default())?;
        if let Some(path) = env.path("QA_MODELS_FILE") {
            let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::new(format!("{}: {e}", path.display())))?;
            manifest.extend(manifest::parse_file(&text)?);
        }
        let mut s3 = S3Settings::default();
        if let Some(dir) = env.path("QA_MODEL_CACHE_DIR") {
            s3.cache_root = dir;
        }
        if let Some(mb) = env.parsed::<u64>("QA_TMP_RESERVE_MB", "a whole number of MiB")? {
            s3.reserve_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(timeout) = env.millis("QA_S3_ATTEMPT_TIMEOUT_MS")? {
            s3.attempt_timeout = timeout;
        }
        if let Some(attempts) = env.positive::<u32>("QA_S3_MAX_ATTEMPTS", "a whole number of attempts, at least 1")? {
            s3.max_attempts = attempts;
        }
        if let Some(mb) = env.positive::<u64>("QA_S3_PART_MB", "a whole number of MiB, at least 1")? {
            s3.part_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(parts) = env.positive::<usize>("QA_S3_CONCURRENCY", "a whole number of parts, at least 1")? {
            s3.concurrency = parts;
        }
        let guest_deadline = env.millis("QA_GUEST_DEADLINE_MS")?.unwrap_or(Duration::from_secs(30));
        let serve = {
            let defaults = ServeLimits::for_deadline(guest_deadline);
            ServeLimits {
                header_timeout: env.millis("QA_SERVE_HEADER_TIMEOUT_MS")?.unwrap_or(defaults.header_timeout),
                request_timeout: env.millis("QA_SERVE_REQUEST_TIMEOUT_MS")?.unwrap_or(defaults.request_timeout),
                max_requests: env
                    .positive("QA_SERVE_MAX_REQUESTS", "a whole number of requests, at least 1")?
                    .unwrap_or(defaults.max_requests),
                max_connections: env
                    .positive("QA_SERVE_MAX_CONNECTIONS", "a whole number of connections, at least 1")?
                    .unwrap_or(defaults.max_connections),
            }
        };
        let lambda = match env.text("AWS_LAMBDA_RUNTIME_API") {
            None => None,
            Some(_) => Some(LambdaEnvironment {
                max_concurrency: env.positive("AWS_LAMBDA_MAX_CONCURRENCY", "a whole number of invocations, at least 1")?.unwrap_or(1),
                snap_start: env.text("AWS_LAMBDA_INITIALIZATION_TYPE").as_deref() == Some("snap-start"),
                memory_mb: env.positive("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "a whole number of MB, at least 1")?,
                managed_instances: env.text("AWS_LAMBDA_MAX_CONCURRENCY").is_some(),
            }),
        };
        let cpu = CpuShare::probe(lambda.as_ref().and_then(LambdaEnvironment::cpu_memory_mb));
        let budgets = Budgets::for_environment(lambda.as_ref(), &cpu);
        let session = session_settings(&env, &cpu, budgets.inference)?;
        s3.downloads = env.positive("QA_MODEL_DOWNLOADS", "a whole number of downloads, at least 1")?.unwrap_or(budgets.model_downloads);
        let nn_defaults = NnLimits::default();
        Ok(Self {
            models_dir: env.path("QA_MODELS_DIR").unwrap_or_else(|| default_models_dir(env.path("LAMBDA_TASK_ROOT"))),
            default_model: env.text("QA_DEFAULT_MODEL"),
            guest_wasm,
            cache_dir: env.path("QA_CACHE_DIR").unwrap_or_else(|| std::env::temp_dir().join("qa-host")),
            cache_bytes: env
                .positive::<u64>("QA_CACHE_MB", "a whole number of MiB, at least 1")?
                .map_or(crate::guest::DEFAULT_CACHE_BYTES, |mb| mb.saturating_mul(1 << 20)),
            onnxruntime: env.path("ORT_DYLIB_PATH"),
            guest_deadline,
            guest_ttl: Duration::from_secs(env.parsed("QA_GUEST_TTL_SECS", "a whole number of seconds")?.unwrap_or(60)),
            guest_memory_bytes: env.positive::<usize>("QA_GUEST_MEMORY_MB", "a whole number of MiB, at least 1")?.unwrap_or(512) << 20,
            compile_snapshots: true,
            max_windows: env.positive("QA_MAX_WINDOWS", "a whole number of windows, at least 1")?.unwrap_or(DEFAULT_MAX_WINDOWS),
            guest_instances: env
                .positive("QA_GUEST_INSTANCES", "a whole number of instances, at least 1")?
                .unwrap_or(budgets.guest_instances),
            guest_memory_total_bytes: env
                .positive::<u64>("QA_GUEST_MEMORY_TOTAL_MB", "a whole number of MiB, at least 1")?
                .or(budgets.guest_memory_total_mb)
                .map(|mb| usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)),
            guest_nn: NnLimits {
                max_input_elements: env
                    .positive("QA_GUEST_NN_ELEMENTS", "a whole number of elements, at least 1")?
                    .unwrap_or(nn_defaults.max_input_elements),
                max_tensor_bytes: env
                    .positive::<u64>("QA_GUEST_NN_MB", "a whole number of MiB, at least 1")?
                    .map_or(nn_defaults.max_tensor_bytes, |mb| mb << 20),
                max_host_bytes: env
                    .positive::<u64>("QA_GUEST_HOST_MB", "a whole number of MiB, at least 1")?
                    .map_or(nn_defaults.max_host_bytes, |mb| mb.saturating_mul(1 << 20)),
                ..nn_defaults
            },
            guest_snapshot_bytes: env
                .positive::<usize>("QA_GUEST_SNAPSHOT_MB", "a whole number of MiB, at least 1")?
                .map_or(crate::guest::DEFAULT_SNAPSHOT_BYTES, |mb| mb.saturating_mul(1 << 20)),
            session,
            cpu,
            preload: env
                .text("QA_PRELOAD")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect(),
            model_cache_mb: env.positive("QA_MODEL_CACHE_MB", "a whole number of MiB, at least 1")?,
            manifest,
            model_ttl: Duration::from_secs(env.parsed("QA_MODEL_TTL_SECS", "a whole number of seconds")?.unwrap_or(60)),
            s3,
            serve,
            rollout: rollout(&env)?,
            lambda,
            telemetry: telemetry(&env)?,
        })
    }
}

/// Logging and metrics. Lambda's own variables (`AWS_LAMBDA_LOG_LEVEL`, `AWS_LAMBDA_LOG_FORMAT`)
/// are set by its logging configuration and taken as they come; ours are checked.
fn telemetry<F: Fn(&str) -> Option<String>>(env: &Settings<F>) -> Result<TelemetryConfig, ConfigError> {
    let defaults = TelemetryConfig::default();
    let log_filter = match env.text("QA_LOG") {
        Some(value) if tracing_subscriber::EnvFilter::try_new(&value).is_err() => {
            return Err(ConfigError::BadSetting { name: "QA_LOG", value, expected: "a log filter such as info or warn,qa_host=debug" });
        }
        Some(value) => Some(value),
        None => env.text("AWS_LAMBDA_LOG_LEVEL").map(|level| lambda_level_directive(&level).to_string()),
    };
    let format = |value: &str| match value.to_ascii_lowercase().as_str() {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => None,
    };
    let log_format = match env.text("QA_LOG_FORMAT") {
        Some(value) => Some(format(&value).ok_or(ConfigError::BadSetting { name: "QA_LOG_FORMAT", value, expected: "json or text" })?),
        None => env.text("AWS_LAMBDA_LOG_FORMAT").and_then(|value| format(&value)),
    };
    Ok(TelemetryConfig {
        log_filter,
        log_format,
        metrics_enabled: !env.switch("POWERTOOLS_METRICS_DISABLED")?.unwrap_or(false),
        metrics_namespace: env.text("POWERTOOLS_METRICS_NAMESPACE").unwrap_or(defaults.metrics_namespace),
        service_name: env.text("POWERTOOLS_SERVICE_NAME").unwrap_or(defaults.service_name),
        function_name: env.text("AWS_LAMBDA_FUNCTION_NAME").unwrap_or(defaults.function_name),
    })
}

/// Lambda's level names (`TRACE`..`FATAL`) as a filter directive.
fn lambda_level_directive(level: &str) -> &'static str {
    match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "warn" => "warn",
        "error" | "fatal" => "error",
        _ => "info",
    }
}

/// How ONNX Runtime runs: `plan` (sized from the CPU share), each part overridden by its
/// setting; spinning, unless set, follows the threads and sessions finally chosen.
fn session_settings<F: Fn(&str) -> Option<String>>(
    env: &Settings<F>,
    cpu: &CpuShare,
    plan: InferencePlan,
) -> Result<SessionSettings, ConfigError> {
    let intra_threads = env.parsed("QA_INFERENCE_THREADS", "a whole number of threads (0: ONNX Runtime's choice)")?.unwrap_or(plan.threads);
    let sessions = env.positive("QA_INFERENCE_CONCURRENCY", "a whole number of inference runs, at least 1")?.unwrap_or(plan.sessions);
    let threads = if intra_threads == 0 { cpu.visible } else { intra_threads };
    Ok(SessionSettings {
        intra_threads,
        spinning: env.switch("QA_INFERENCE_SPINNING")?.unwrap_or_else(|| InferencePlan::may_spin(cpu, threads, sessions)),
        memory_arena: env.switch("QA_ORT_ARENA")?.unwrap_or(true),
        sessions,
    })
}

/// The candidate guest, if `QA_GUEST_SHADOW` or `QA_GUEST_CANARY` names one (not both: one
/// candidate at a time), with its share and the rollback policy.
fn rollout<F: Fn(&str) -> Option<String>>(env: &Settings<F>) -> Result<Option<RolloutSettings>, ConfigError> {
    let (mode, candidate, percent) = match (env.guest("QA_GUEST_SHADOW")?, env.guest("QA_GUEST_CANARY")?) {
        (None, None) => return Ok(None),
        (Some(_), Some(canary)) => {
            return Err(ConfigError::BadSetting {
                name: "QA_GUEST_CANARY",
                value: canary.to_string(),
                expected: "unset while QA_GUEST_SHADOW is set (one candidate at a time)",
            });
        }
        (Some(path), None) => (Mode::Shadow, path, env.percent("QA_GUEST_SHADOW_PERCENT")?.unwrap_or(100.0)),
        (None, Some(path)) => (Mode::Canary, path, env.percent("QA_GUEST_CANARY_PERCENT")?.unwrap_or(10.0)),
    };
    let defaults = Policy::default();
    let policy = Policy {
        window: env.positive("QA_ROLLOUT_WINDOW", "a whole number of calls, at least 1")?.unwrap_or(defaults.window),
        min_calls: env.positive("QA_ROLLOUT_MIN_CALLS", "a whole number of calls, at least 1")?.unwrap_or(defaults.min_calls),
        failure_margin: env.percent("QA_ROLLOUT_FAILURE_MARGIN_PCT")?.map_or(defaults.failure_margin, |p| p / 100.0),
        latency_ratio: match env.parsed::<f64>("QA_ROLLOUT_LATENCY_RATIO", "a ratio of at least 1, such as 2.0")? {
            Some(r) if !(r >= 1.0 && r.is_finite()) => {
                return Err(ConfigError::BadSetting {
                    name: "QA_ROLLOUT_LATENCY_RATIO",
                    value: r.to_string(),
                    expected: "a ratio of at least 1, such as 2.0",
                });
            }
            r => r.unwrap_or(defaults.latency_ratio),
        },
        promote_after: env.positive("QA_ROLLOUT_PROMOTE_AFTER", "a whole number of calls, at least 1")?,
        shadow_max_delay: env.millis("QA_GUEST_SHADOW_MAX_DELAY_MS")?.unwrap_or(defaults.shadow_max_delay),
        shadow_deadline: env.millis("QA_GUEST_SHADOW_DEADLINE_MS")?.unwrap_or(defaults.shadow_deadline),
    };
    Ok(Some(RolloutSettings { mode, candidate, percent, policy }))
}

impl HostConfig {
    /// How guests run, from these settings, with a fresh [`crate::boundary::MemoryBudget`] and
    /// [`crate::guest::InstanceBudget`]: the guests that share one call's settings share them.
    pub fn guest_settings(&self) -> crate::guest::GuestSettings {
        crate::guest::GuestSettings {
            deadline: self.guest_deadline,
            memory_bytes: self.guest_memory_bytes,
            nn: self.guest_nn,
            instances: self.guest_instances,
            instances_total: crate::guest::InstanceBudget::new(self.guest_instances),
            compile_snapshots: self.compile_snapshots,
            memory_total: crate::boundary::MemoryBudget::new(self.guest_memory_total_bytes),
            snapshot_bytes: self.guest_snapshot_bytes,
        }
    }
}

/// `$LAMBDA_TASK_ROOT/models` inside Lambda (the image layout), else `./models`.
fn default_models_dir(task_root: Option<PathBuf>) -> PathBuf {
    task_root.map_or_else(|| PathBuf::from("models"), |root| root.join("models"))
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

/// Bounds on what clients can make `serve` hold ([`crate::server`]).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Time from a connection's start (or its previous response) to the end of a request's
    /// headers (`QA_SERVE_HEADER_TIMEOUT_MS`).
    pub header_timeout: Duration,
    /// Time from the end of the headers to the response, body upload included
    /// (`QA_SERVE_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// Requests answered at once; more are refused with 503 `overloaded`
    /// (`QA_SERVE_MAX_REQUESTS`).
    pub max_requests: usize,
    /// Open connections; more wait to be accepted (`QA_SERVE_MAX_CONNECTIONS`).
    pub max_connections: usize,
}

impl ServeLimits {
    /// The defaults, for a guest deadline of `guest_deadline`: a request may take the deadline
    /// plus 10 s (model load, body upload).
    pub fn for_deadline(guest_deadline: Duration) -> Self {
        ServeLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: guest_deadline + Duration::from_secs(10),
            max_requests: 64,
            max_connections: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(settings: &[(&str, &str)]) -> Result<HostConfig, ConfigError> {
        let map: HashMap<String, String> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HostConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn settings_parse_and_unset_or_empty_ones_take_defaults() {
        let c = config(&[("QA_GUEST_DEADLINE_MS", " 1500 "), ("QA_ORT_ARENA", "off"), ("QA_MAX_WINDOWS", ""), ("QA_PRELOAD", "a, b,")])
            .unwrap();
        assert_eq!(c.guest_deadline, Duration::from_millis(1500));
        assert_eq!(c.serve.request_timeout, Duration::from_millis(11_500), "the request timeout follows the deadline");
        assert!(!c.session.memory_arena);
        assert_eq!(c.max_windows, DEFAULT_MAX_WINDOWS);
        assert_eq!(c.preload, ["a", "b"]);
    }

    /// docs/configuration.md's table, default column.
    #[test]
    fn with_nothing_set_every_setting_is_its_documented_default() {
        let c = config(&[]).unwrap();
        assert_eq!(c.default_model, None);
        assert_eq!(c.cache_dir, std::env::temp_dir().join("qa-host"));
        // Sized from the machine's CPU share (its quota or affinity mask).
        let plan = InferencePlan::for_share(&c.cpu, None);
        assert_eq!((c.session.intra_threads, c.session.sessions, c.session.spinning), (plan.threads, plan.sessions, plan.spinning));
        assert!(c.session.memory_arena);
        assert!(c.manifest.is_empty() && c.preload.is_empty());
        assert_eq!(c.model_ttl, Duration::from_secs(60));
        assert_eq!(c.guest_ttl, Duration::from_secs(60));
        assert_eq!(c.s3.cache_root, std::env::temp_dir().join("qa-models"), "/tmp/qa-models on Lambda");
        assert_eq!(c.s3.reserve_bytes, 16 << 20);
        assert_eq!(c.model_cache_mb, None, "unbounded");
        assert_eq!((c.guest_deadline, c.guest_memory_bytes), (Duration::from_millis(30_000), 512 << 20));
        assert_eq!((c.guest_nn.max_input_elements, c.guest_nn.max_tensor_bytes), (4096, 64 << 20));
        assert_eq!((c.guest_nn.max_host_bytes, c.guest_snapshot_bytes, c.cache_bytes), (96 << 20, 128 << 20, 256 << 20));
        assert_eq!((c.guest_instances, c.max_windows), (256, 256));
        assert_eq!((c.serve.header_timeout, c.serve.request_timeout), (Duration::from_millis(10_000), Duration::from_millis(40_000)));
        assert_eq!((c.serve.max_requests, c.serve.max_connections), (64, 1024));
        assert_eq!((c.s3.attempt_timeout, c.s3.max_attempts), (Duration::from_millis(30_000), 4));
        assert_eq!((c.s3.part_bytes, c.s3.concurrency), (8 << 20, 4));
        assert_eq!((c.guest_memory_total_bytes, c.s3.downloads), (None, 2));
        assert_eq!(c.lambda, None);
        // A candidate guest named and nothing else: its share and the rollout rule.
        let shadow = config(&[("QA_GUEST_SHADOW", "a.wasm")]).unwrap().rollout.unwrap();
        let canary = config(&[("QA_GUEST_CANARY", "a.wasm")]).unwrap().rollout.unwrap();
        assert_eq!((shadow.percent, canary.percent), (100.0, 10.0));
        let documented = Policy {
            window: 50,
            min_calls: 10,
            failure_margin: 0.10,
            latency_ratio: 2.0,
            promote_after: None,
            shadow_max_delay: Duration::from_millis(1000),
            shadow_deadline: Duration::from_millis(5000),
        };
        assert_eq!((shadow.policy, canary.policy), (documented, documented));
    }

    #[test]
    fn the_ranged_download_s_part_size_and_concurrency_are_read_and_checked() {
        let c = config(&[("QA_S3_PART_MB", "64"), ("QA_S3_CONCURRENCY", "16")]).unwrap();
        assert_eq!((c.s3.part_bytes, c.s3.concurrency), (64 << 20, 16));
        for bad in [("QA_S3_PART_MB", "0"), ("QA_S3_CONCURRENCY", "0"), ("QA_S3_PART_MB", "8M")] {
            assert!(config(&[bad]).unwrap_err().to_string().contains(bad.0), "{bad:?}");
        }
    }

    #[test]
    fn guest_limits_are_read_from_their_variables() {
        let c = config(&[
            ("QA_GUEST_DEADLINE_MS", "1200"),
            ("QA_GUEST_MEMORY_MB", "96"),
            ("QA_GUEST_NN_ELEMENTS", "1000"),
            ("QA_GUEST_NN_MB", "3"),
            ("QA_GUEST_HOST_MB", "5"),
            ("QA_GUEST_SNAPSHOT_MB", "40"),
            ("QA_GUEST_INSTANCES", "7"),
            ("QA_CACHE_MB", "300"),
        ])
        .unwrap();
        let guest = c.guest_settings();
        assert_eq!((guest.deadline, guest.memory_bytes, guest.instances), (Duration::from_millis(1200), 96 << 20, 7));
        assert_eq!((guest.nn.max_input_elements, guest.nn.max_tensor_bytes, guest.nn.max_host_bytes), (1000, 3 << 20, 5 << 20));
        assert_eq!((guest.snapshot_bytes, c.cache_bytes), (40 << 20, 300 << 20));
        for bad in ["QA_GUEST_HOST_MB", "QA_GUEST_SNAPSHOT_MB", "QA_CACHE_MB"] {
            assert!(config(&[(bad, "0")]).map(drop).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    /// The per-environment budgets follow the invocations Lambda sends at once: enough guest
    /// instances for each and its shadow call, half the function's memory for guests,
    /// inference sized from the CPU share with a session per whole CPU up to one per
    /// invocation, 2 to 4 downloads.
    #[test]
    fn budgets_are_sized_from_the_environment_s_concurrency_and_cpu_share() {
        let cores = |n| CpuShare::from_parts(None, None, n);
        let outside = Budgets::for_environment(None, &cores(8));
        let plan = |threads, sessions, spinning| InferencePlan { threads, sessions, spinning };
        assert_eq!(
            outside,
            Budgets { guest_instances: 256, guest_memory_total_mb: None, inference: plan(8, 8, false), model_downloads: 2 }
        );
        let lambda = |max_concurrency, memory_mb| LambdaEnvironment {
            max_concurrency,
            snap_start: false,
            memory_mb,
            managed_instances: max_concurrency > 1,
        };
        // On demand: the CPU is the memory's share of a vCPU, one invocation at a time.
        let classic = lambda(1, Some(2048));
        let share = CpuShare::from_parts(classic.cpu_memory_mb(), None, 2);
        assert_eq!(
            Budgets::for_environment(Some(&classic), &share),
            Budgets { guest_instances: 4, guest_memory_total_mb: Some(1024), inference: plan(2, 1, false), model_downloads: 2 }
        );
        let small = lambda(1, Some(512));
        let share = CpuShare::from_parts(small.cpu_memory_mb(), None, 2);
        assert_eq!(Budgets::for_environment(Some(&small), &share).inference, plan(1, 1, false), "0.29 of a vCPU: one thread");
        // Managed Instances: the environment's own vCPUs (here 2), a session each.
        let managed = lambda(8, Some(4096));
        assert_eq!(managed.cpu_memory_mb(), None, "the memory does not size the CPU there");
        let budgets = Budgets::for_environment(Some(&managed), &cores(2));
        assert_eq!((budgets.guest_instances, budgets.inference), (8 + 4 + 2, plan(2, 2, false)));
        assert_eq!((budgets.guest_memory_total_mb, budgets.model_downloads), (Some(2048), 4));
        let wide = Budgets::for_environment(Some(&lambda(4, None)), &cores(16));
        assert_eq!((wide.inference, wide.guest_memory_total_mb), (plan(16, 4, false), None));
        assert_eq!(Budgets::for_environment(Some(&lambda(64, None)), &cores(4)).guest_instances, 64 + 4 + 2, "shadow calls are capped");
    }

    /// Lambda's own variables are read once, with the rest; a `QA_*` setting overrides the
    /// budget it sizes.
    #[test]
    fn lambda_s_variables_size_the_defaults_and_settings_override_them() {
        assert_eq!(config(&[("AWS_LAMBDA_MAX_CONCURRENCY", "8")]).unwrap().lambda, None, "not under Lambda");
        let runtime = ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001");
        let c = config(&[runtime, ("AWS_LAMBDA_MAX_CONCURRENCY", "8"), ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096")]).unwrap();
        let lambda = c.lambda.expect("under Lambda");
        assert_eq!((lambda.max_concurrency, lambda.snap_start, lambda.memory_mb, lambda.managed_instances), (8, false, Some(4096), true));
        assert_eq!((c.guest_instances, c.guest_memory_total_bytes, c.s3.downloads), (14, Some(2048 << 20), 4));
        assert_eq!(c.session.sessions, InferencePlan::for_share(&c.cpu, Some(8)).sessions);
        // On demand, the function's memory sizes the CPU share.
        let on_demand = config(&[runtime, ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")]).unwrap();
        assert!(matches!(on_demand.cpu.source, crate::nn::cpu::ShareSource::LambdaMemory { memory_mb: 512 }), "{:?}", on_demand.cpu);
        assert_eq!((on_demand.session.intra_threads, on_demand.session.sessions, on_demand.session.spinning), (1, 1, false));
        let set = config(&[
            runtime,
            ("AWS_LAMBDA_MAX_CONCURRENCY", "8"),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start"),
            ("QA_GUEST_INSTANCES", "3"),
            ("QA_GUEST_MEMORY_TOTAL_MB", "100"),
            ("QA_INFERENCE_CONCURRENCY", "1"),
            ("QA_INFERENCE_THREADS", "2"),
            ("QA_INFERENCE_SPINNING", "on"),
            ("QA_MODEL_DOWNLOADS", "1"),
        ])
        .unwrap();
        assert!(set.lambda.unwrap().snap_start);
        assert_eq!((set.guest_instances, set.guest_memory_total_bytes, set.s3.downloads), (3, Some(100 << 20), 1));
        assert_eq!((set.session.sessions, set.session.intra_threads, set.session.spinning), (1, 2, true));
        // Threads set and spinning not: spinning follows the threads chosen and the share.
        let one = config(&[runtime, ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769"), ("QA_INFERENCE_THREADS", "2")]).unwrap();
        assert!(!one.session.spinning, "2 threads on one vCPU do not spin");
        let error = config(&[runtime, ("AWS_LAMBDA_MAX_CONCURRENCY", "many")]).map(drop).unwrap_err().to_string();
        assert!(error.starts_with("AWS_LAMBDA_MAX_CONCURRENCY=\"many\""), "{error}");
    }

    /// Where models and the guest are found when no path is set: the image layout under
    /// Lambda, the repository's build output when run from a checkout.
    #[test]
    fn default_paths_follow_the_lambda_task_root_and_the_executable() {
        assert_eq!(config(&[]).unwrap().models_dir, PathBuf::from("models"));
        assert_eq!(config(&[("LAMBDA_TASK_ROOT", "/var/task")]).unwrap().models_dir, PathBuf::from("/var/task/models"));
        let root = tempfile::tempdir().unwrap();
        let (exe_dir, build) = (root.path().join("release"), root.path().join("wasm32-wasip2/release"));
        std::fs::create_dir_all(&exe_dir).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join("qa-guest.wasm"), b"").unwrap();
        assert_eq!(
            default_guest(Some(&exe_dir)),
            exe_dir.join("../wasm32-wasip2/release/qa-guest.wasm"),
            "cargo's output beside target/release"
        );
        std::fs::write(exe_dir.join("qa-guest.wasm"), b"").unwrap();
        assert_eq!(default_guest(Some(&exe_dir)), exe_dir.join("qa-guest.wasm"), "beside the executable first (the image)");
    }

    #[test]
    fn one_candidate_guest_at_a_time_with_its_share_and_policy() {
        assert!(config(&[]).unwrap().rollout.is_none());
        let canary = config(&[("QA_GUEST_CANARY", "s3://b/next.wasm"), ("QA_ROLLOUT_FAILURE_MARGIN_PCT", "5")]).unwrap().rollout.unwrap();
        assert_eq!((canary.mode, canary.percent, canary.setting()), (Mode::Canary, 10.0, "QA_GUEST_CANARY"));
        assert_eq!(canary.policy, Policy { failure_margin: 0.05, ..Policy::default() });
        let shadow =
            config(&[("QA_GUEST_SHADOW", "/mnt/g.wasm"), ("QA_GUEST_SHADOW_PERCENT", "12.5"), ("QA_ROLLOUT_PROMOTE_AFTER", "500")])
                .unwrap()
                .rollout
                .unwrap();
        assert_eq!((shadow.mode, shadow.percent, shadow.policy.promote_after), (Mode::Shadow, 12.5, Some(500)));
        assert_eq!(canary.candidate, GuestLocation::S3 { bucket: "b".into(), key: "next.wasm".into() });
        assert_eq!(shadow.candidate, GuestLocation::File("/mnt/g.wasm".into()));
        for name in ["QA_GUEST", "QA_GUEST_SHADOW", "QA_GUEST_CANARY"] {
            let error = config(&[(name, "s3://bucket/guests/")]).map(drop).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{name}=")) && error.contains("s3://bucket/key"), "{error}");
        }
        let both = config(&[("QA_GUEST_SHADOW", "a.wasm"), ("QA_GUEST_CANARY", "b.wasm")]).map(drop).unwrap_err().to_string();
        assert!(both.contains("one candidate at a time"), "{both}");
        for (name, value) in [("QA_GUEST_CANARY_PERCENT", "101"), ("QA_GUEST_CANARY_PERCENT", "-1"), ("QA_ROLLOUT_LATENCY_RATIO", "0.5")] {
            let error = config(&[("QA_GUEST_CANARY", "b.wasm"), (name, value)]).map(drop).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{name}=")), "{error}");
        }
    }

    #[test]
    fn a_value_that_does_not_parse_stops_start_up_naming_the_setting() {
        for (name, value) in [
            ("QA_GUEST_DEADLINE_MS", "30s"),
            ("QA_GUEST_DEADLINE_MS", "0"),
            ("QA_SERVE_MAX_REQUESTS", "-1"),
            ("QA_GUEST_MEMORY_MB", "lots"),
            ("QA_ORT_ARENA", "maybe"),
            ("QA_MODEL_TTL_SECS", "1.5"),
            ("QA_MODEL_CACHE_MB", "0"),
            ("QA_GUEST_MEMORY_TOTAL_MB", "0"),
            ("QA_INFERENCE_CONCURRENCY", "0"),
            ("QA_INFERENCE_THREADS", "-1"),
            ("QA_INFERENCE_SPINNING", "sometimes"),
            ("QA_MODEL_DOWNLOADS", "none"),
            ("QA_LOG", "qa_host=loud"),
            ("QA_LOG_FORMAT", "yaml"),
            ("POWERTOOLS_METRICS_DISABLED", "maybe"),
        ] {
            let error = config(&[(name, value)]).map(drop).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{name}={value:?} is not ")), "{name}={value}: {error}");
        }
    }

    /// Logging and metrics are read with the rest: ours checked, Lambda's taken as they come,
    /// ours first.
    #[test]
    fn logging_and_metrics_settings_are_read_once_with_the_rest() {
        let unset = config(&[]).unwrap().telemetry;
        assert_eq!(unset, TelemetryConfig::default());
        assert!(unset.metrics_enabled);
        let lambda = config(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL"), ("AWS_LAMBDA_LOG_FORMAT", "JSON"), ("AWS_LAMBDA_FUNCTION_NAME", "qa")])
            .unwrap()
            .telemetry;
        assert_eq!(
            (lambda.log_filter.as_deref(), lambda.log_format, lambda.function_name.as_str()),
            (Some("error"), Some(LogFormat::Json), "qa")
        );
        let ours = config(&[
            ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("QA_LOG", "warn,qa_host=debug"),
            ("QA_LOG_FORMAT", "Text"),
            ("POWERTOOLS_METRICS_DISABLED", "1"),
            ("POWERTOOLS_METRICS_NAMESPACE", "Mine"),
            ("POWERTOOLS_SERVICE_NAME", "svc"),
        ])
        .unwrap()
        .telemetry;
        assert_eq!(
            ours,
            TelemetryConfig {
                log_filter: Some("warn,qa_host=debug".into()),
                log_format: Some(LogFormat::Text),
                metrics_enabled: false,
                metrics_namespace: "Mine".into(),
                service_name: "svc".into(),
                function_name: "local".into(),
            }
        );
        // A level or format Lambda does not document is left to the default, not refused: the
        // function's logging configuration sets them, not the operator of this host.
        let odd = config(&[("AWS_LAMBDA_LOG_LEVEL", "?"), ("AWS_LAMBDA_LOG_FORMAT", "xml")]).unwrap().telemetry;
        assert_eq!((odd.log_filter.as_deref(), odd.log_format), (Some("info"), None));
        for (level, directive) in
            [("TRACE", "trace"), ("DEBUG", "debug"), ("INFO", "info"), ("WARN", "warn"), ("ERROR", "error"), ("FATAL", "error")]
        {
            assert_eq!(lambda_level_directive(level), directive, "{level}");
        }
    }
}
