//! The wasi-nn side of the host: ONNX Runtime set-up, the [`Model`] seam a backend
//! implements ([`onnx`], one file per backend), who runs inference next ([`schedule`]), how
//! much CPU it may use ([`cpu`]), and the bounded `wasi:nn` imports a guest sees ([`wit`]):
//! one graph, the request's, and tensors within a budget.

pub mod cpu;
pub mod model_file;
pub mod onnx;
pub mod schedule;
pub mod wit;

pub use schedule::{Call, Priority};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
pub use wit::{NnLimits, NnState, NnView, TensorType};

/// Why ONNX Runtime or a model could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(
        "ONNX Runtime library not found (looked for {looked}); set ORT_DYLIB_PATH to libonnxruntime.so \
         (`bash scripts/setup.sh` downloads it from the onnxruntime wheel on PyPI)"
    )]
    RuntimeMissing { looked: String },
    #[error("ONNX Runtime at {path} could not be loaded: {reason}")]
    RuntimeUnusable { path: PathBuf, reason: String },
    #[error("{path}: not a loadable ONNX model: {reason}")]
    ModelUnloadable { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl NnError {
    /// What a client may be told: the reason without host paths (the log has the whole error).
    pub fn client_reason(&self) -> String {
        match self {
            NnError::ModelUnloadable { reason, .. } => reason.clone(),
            NnError::Io { source, .. } => format!("model.onnx: {source}"),
            NnError::RuntimeMissing { .. } | NnError::RuntimeUnusable { .. } => "ONNX Runtime is not usable on this host".into(),
        }
    }
}

/// Finds `libonnxruntime.so` and initialises ONNX Runtime with it, once per process, with
/// one intra-op thread pool that every session shares (`settings`' threads and spinning): the
/// process's CPU share is divided among concurrent runs by the pool, never multiplied by the
/// sessions. A later call with other settings gets the first call's environment.
///
/// Search order: `explicit` (the `--onnxruntime` flag or `ORT_DYLIB_PATH`), beside the
/// executable, `/opt/lib` (Lambda layers) and `/usr/local/lib`.
pub fn init_onnx_runtime(explicit: Option<&Path>, settings: &onnx::SessionSettings) -> Result<PathBuf, NnError> {
    static INIT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let candidates = runtime_candidates(explicit, exe_dir.as_deref());
    let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
        let looked = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(NnError::RuntimeMissing { looked });
    };
    let outcome = INIT.get_or_init(|| {
        // `ort` panics when the library cannot be opened or is too old; turn that into an error.
        let committed = std::panic::catch_unwind(|| {
            let builder = ort::init_from(path.display().to_string());
            builder.with_global_thread_pool(thread_pool(settings)?).commit()
        });
        match committed {
            Ok(Ok(_)) => {
                set_onnx_runtime_log_level();
                Ok(path.clone())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "ONNX Runtime initialisation panicked".into())),
        }
    });
    outcome.clone().map_err(|reason| NnError::RuntimeUnusable { path, reason })
}

/// The shared intra-op pool: `settings`' threads and spinning. Sessions run their graphs
/// sequentially, so the inter-op pool is one thread (none beside the caller).
fn thread_pool(settings: &onnx::SessionSettings) -> ort::Result<ort::environment::GlobalThreadPoolOptions> {
    let pool = ort::environment::GlobalThreadPoolOptions::default().with_inter_threads(1)?.with_spin_control(settings.spinning)?;
    if settings.intra_threads > 0 { pool.with_intra_threads(settings.intra_threads) } else { Ok(pool) }
}

/// ONNX Runtime logs through `tracing` under the target `ort` (ort's `tracing` feature), at
/// whatever the log filter lets through for that target. Its environment starts at verbose, and
/// ONNX Runtime formats every message at or above its level before the filter sees it: lowered
/// to what the filter keeps, messages nobody reads cost nothing.
fn set_onnx_runtime_log_level() {
    use ort::logging::LogLevel;
    use tracing::Level;
    let level = if tracing::enabled!(target: "ort::logging", Level::TRACE) {
        LogLevel::Verbose
    } else if tracing::enabled!(target: "ort::logging", Level::INFO) {
        LogLevel::Info
    } else if tracing::enabled!(target: "ort::logging", Level::WARN) {
        LogLevel::Warning
    } else if tracing::enabled!(target: "ort::logging", Level::ERROR) {
        LogLevel::Error
    } else {
        LogLevel::Fatal
    };
    if let Ok(environment) = ort::environment::get_environment() {
        environment.set_log_level(level);
    }
}

/// Where [`init_onnx_runtime`] looks for the library, in order.
fn runtime_candidates(explicit: Option<&Path>, exe_dir: Option<&Path>) -> Vec<PathBuf> {
    match explicit {
        Some(path) => vec![path.to_path_buf()],
        None => exe_dir
            .map(|d| d.join("libonnxruntime.so"))
            .into_iter()
            .chain(["/opt/lib/libonnxruntime.so", "/usr/local/lib/libonnxruntime.so"].map(PathBuf::from))
            .collect(),
    }
}

/// A tensor crossing wasi-nn: dimensions, element type and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dimensions: Vec<u32>,
    pub ty: TensorType,
    pub data: Vec<u8>,
}

impl Tensor {
    /// Number of elements its dimensions describe (saturating: a hostile shape cannot wrap).
    pub fn elements(&self) -> u64 {
        self.dimensions.iter().fold(1u64, |n, &d| n.saturating_mul(u64::from(d)))
    }
}

/// A tensor with the name of the graph input or output it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// A model a backend made ready to run: named tensors in, named tensors out. One backend,
/// one file ([`onnx`]); a request's guest reaches a model only through [`wit`].
pub trait Model: Send + Sync {
    /// Runs the model on `inputs`. Blocking; stops early (with an error) once `run` is
    /// terminated. Errors are messages for the guest and the host's log.
    fn run(&self, inputs: Vec<NamedTensor>, run: &RunControl) -> Result<Vec<NamedTensor>, String>;

    /// The model as one guest call's runs reach it: each run scheduled by the call's priority
    /// and by the inference the call already had ([`schedule`]).
    fn for_call(self: Arc<Self>, call: Arc<Call>) -> Arc<dyn Model>;
}

/// Lets the host stop one request's inference run from another thread (ONNX Runtime checks
/// the flag between graph nodes; a run still waiting for a session leaves the queue).
#[derive(Clone)]
pub struct RunControl {
    options: Option<Arc<ort::session::RunOptions>>,
    terminated: Arc<AtomicBool>,
}

impl RunControl {
    pub fn new() -> Self {
        Self { options: ort::session::RunOptions::new().ok().map(Arc::new), terminated: Arc::new(AtomicBool::new(false)) }
    }

    pub fn terminate(&self) {
        self.terminated.store(true, Ordering::Release);
        if let Some(options) = &self.options {
            let _ = options.terminate();
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// The options a run must be given to be stoppable (`None` only if ONNX Runtime could
    /// not allocate them, in which case runs are bounded by the element budget alone).
    pub fn options(&self) -> Option<&ort::session::RunOptions> {
        self.options.as_deref()
    }
}

impl Default for RunControl {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_is_looked_for_where_it_is_set_else_beside_the_executable_then_in_the_layer_paths() {
        let set = Path::new("/somewhere/libonnxruntime.so");
        assert_eq!(runtime_candidates(Some(set), Some(Path::new("/var/task"))), [set]);
        let found = runtime_candidates(None, Some(Path::new("/var/task")));
        let expected = ["/var/task/libonnxruntime.so", "/opt/lib/libonnxruntime.so", "/usr/local/lib/libonnxruntime.so"];
        assert_eq!(found, expected.map(PathBuf::from));
    }
}
