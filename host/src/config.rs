//! Where the host finds its parts, from flags and environment variables.

use crate::models::S3Settings;
use crate::models::manifest::{self, ManifestError};
use crate::nn::NnLimits;
use crate::nn::onnx::SessionSettings;
use crate::rollout::{Mode, Policy, RolloutSettings};
use crate::server::ServeLimits;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Windows one request may run by default: about 8 s of inference on a 2-core x86-64 machine
/// (about 31 ms a 384-token window, `bench/long_docs.py`), and about 300 KB of English text at
/// the default window and stride (200 KB of SQuAD paragraphs needs 167 windows).
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
    /// fetched at start-up (see [`crate::guest::resolve_guest`]).
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
    /// A candidate guest in shadow or canary mode (`QA_GUEST_SHADOW`, `QA_GUEST_CANARY`).
    pub rollout: Option<RolloutSettings>,
}

/// Why the configuration is unusable: start-up stops and says which setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{name}={value:?} is not {expected}")]
    BadSetting { name: &'static str, value: String, expected: &'static str },
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
        let guest_wasm = env.path("QA_GUEST").unwrap_or_else(|| default_guest(exe_dir.as_deref()));
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
        let nn_defaults = NnLimits::default();
        Ok(Self {
            models_dir: env.path("QA_MODELS_DIR").unwrap_or_else(|| default_models_dir(env.path("LAMBDA_TASK_ROOT"))),
            default_model: env.text("QA_DEFAULT_MODEL"),
            guest_wasm,
            guest_s3: None,
            cache_dir: env.path("QA_CACHE_DIR").unwrap_or_else(|| std::env::temp_dir().join("qa-host")),
            onnxruntime: env.path("ORT_DYLIB_PATH"),
            guest_deadline,
            guest_ttl: Duration::from_secs(env.parsed("QA_GUEST_TTL_SECS", "a whole number of seconds")?.unwrap_or(60)),
            guest_memory_bytes: env.positive::<usize>("QA_GUEST_MEMORY_MB", "a whole number of MiB, at least 1")?.unwrap_or(512) << 20,
            compile_snapshots: true,
            max_windows: env.positive("QA_MAX_WINDOWS", "a whole number of windows, at least 1")?.unwrap_or(DEFAULT_MAX_WINDOWS),
            guest_instances: env
                .positive("QA_GUEST_INSTANCES", "a whole number of instances, at least 1")?
                .unwrap_or(crate::guest::DEFAULT_INSTANCES),
            guest_nn: NnLimits {
                max_input_elements: env
                    .positive("QA_GUEST_NN_ELEMENTS", "a whole number of elements, at least 1")?
                    .unwrap_or(nn_defaults.max_input_elements),
                max_tensor_bytes: env
                    .positive::<u64>("QA_GUEST_NN_MB", "a whole number of MiB, at least 1")?
                    .map_or(nn_defaults.max_tensor_bytes, |mb| mb << 20),
                ..nn_defaults
            },
            session: SessionSettings {
                intra_threads: env.parsed("QA_INFERENCE_THREADS", "a whole number of threads (0: ONNX Runtime's choice)")?.unwrap_or(0),
                memory_arena: env.switch("QA_ORT_ARENA")?.unwrap_or(true),
            },
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
        })
    }
}

/// The candidate guest, if `QA_GUEST_SHADOW` or `QA_GUEST_CANARY` names one (not both: one
/// candidate at a time), with its share and the rollback policy.
fn rollout<F: Fn(&str) -> Option<String>>(env: &Settings<F>) -> Result<Option<RolloutSettings>, ConfigError> {
    let (mode, candidate, percent) = match (env.path("QA_GUEST_SHADOW"), env.path("QA_GUEST_CANARY")) {
        (None, None) => return Ok(None),
        (Some(_), Some(canary)) => {
            return Err(ConfigError::BadSetting {
                name: "QA_GUEST_CANARY",
                value: canary.display().to_string(),
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
    };
    Ok(Some(RolloutSettings { mode, candidate, candidate_s3: None, percent, policy }))
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

    /// The README's configuration table, default column.
    #[test]
    fn with_nothing_set_every_setting_is_its_documented_default() {
        let c = config(&[]).unwrap();
        assert_eq!(c.default_model, None);
        assert_eq!(c.cache_dir, std::env::temp_dir().join("qa-host"));
        assert_eq!(c.session.intra_threads, 0, "ONNX Runtime's choice");
        assert!(c.session.memory_arena);
        assert!(c.manifest.is_empty() && c.preload.is_empty());
        assert_eq!(c.model_ttl, Duration::from_secs(60));
        assert_eq!(c.guest_ttl, Duration::from_secs(60));
        assert_eq!(c.s3.cache_root, std::env::temp_dir().join("qa-models"), "/tmp/qa-models on Lambda");
        assert_eq!(c.s3.reserve_bytes, 16 << 20);
        assert_eq!(c.model_cache_mb, None, "unbounded");
        assert_eq!((c.guest_deadline, c.guest_memory_bytes), (Duration::from_millis(30_000), 512 << 20));
        assert_eq!((c.guest_nn.max_input_elements, c.guest_nn.max_tensor_bytes), (4096, 64 << 20));
        assert_eq!((c.guest_instances, c.max_windows), (256, 256));
        assert_eq!((c.serve.header_timeout, c.serve.request_timeout), (Duration::from_millis(10_000), Duration::from_millis(40_000)));
        assert_eq!((c.serve.max_requests, c.serve.max_connections), (64, 1024));
        assert_eq!((c.s3.attempt_timeout, c.s3.max_attempts), (Duration::from_millis(30_000), 4));
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
        };
        assert_eq!((shadow.policy, canary.policy), (documented, documented));
    }

    #[test]
    fn guest_limits_are_read_from_their_variables() {
        let c = config(&[
            ("QA_GUEST_DEADLINE_MS", "1200"),
            ("QA_GUEST_MEMORY_MB", "96"),
            ("QA_GUEST_NN_ELEMENTS", "1000"),
            ("QA_GUEST_NN_MB", "3"),
            ("QA_GUEST_INSTANCES", "7"),
        ])
        .unwrap();
        let guest = c.guest_settings();
        assert_eq!((guest.deadline, guest.memory_bytes, guest.instances), (Duration::from_millis(1200), 96 << 20, 7));
        assert_eq!((guest.nn.max_input_elements, guest.nn.max_tensor_bytes), (1000, 3 << 20));
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
        ] {
            let error = config(&[(name, value)]).map(drop).unwrap_err().to_string();
            assert!(error.starts_with(&format!("{name}={value:?} is not ")), "{name}={value}: {error}");
        }
    }
}
