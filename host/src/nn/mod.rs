//! The wasi-nn side of the host: ONNX Runtime set-up, the [`Model`] seam a backend
//! implements ([`onnx`], one file per backend), who runs inference next ([`schedule`]), how
//! much CPU it may use ([`cpu`]), and the bounded `wasi:nn` imports a guest sees ([`wit`]):
//! one graph, the request's, and tensors within a budget.

pub mod cpu;
pub mod model_file;
pub mod onnx;
pub mod optimized;
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
    /// The host's own check of the file refused it before ONNX Runtime saw it.
    #[error("{path}: not a loadable ONNX model: {source}")]
    ModelRefused {
        path: PathBuf,
        #[source]
        source: model_file::ModelFileError,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl NnError {
    /// What a client may be told: the reason without host paths (the log has the whole error).
    pub fn client_reason(&self) -> String {
        match self {
            NnError::ModelUnloadable { reason, .. } => reason.clone(),
            NnError::ModelRefused { source, .. } => source.to_string(),
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
        // It also warns of every release newer than the C API it speaks (1.22's), which later
        // releases keep: its events are dropped here and the host says itself, below, which
        // release it loaded and whether that one was tested.
        let committed = std::panic::catch_unwind(|| {
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                let builder = ort::init_from(path.display().to_string());
                builder.with_global_thread_pool(thread_pool(settings)?).commit()
            })
        });
        match committed {
            Ok(Ok(_)) => {
                set_onnx_runtime_log_level();
                log_runtime_version(&path);
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

/// The ONNX Runtime releases the host's tests and measurements ran on: `ort` speaks the C API
/// of 1.22, which every later release keeps (ONNX Runtime only appends to its API tables).
pub const TESTED_RUNTIMES: std::ops::RangeInclusive<(u32, u32)> = (1, 22)..=(1, 31);

/// Logs the release of the library ONNX Runtime was loaded from, with a warning when it is
/// outside [`TESTED_RUNTIMES`] (older ones `ort` has already refused).
fn log_runtime_version(path: &Path) {
    let version = runtime_version(path);
    if let Ok(version) = &version {
        let _ = LOADED_RUNTIME.set(version.clone());
    }
    match version {
        Ok(version) if is_tested_runtime(&version) => tracing::info!(%version, path = %path.display(), "ONNX Runtime loaded"),
        Ok(version) => tracing::warn!(
            %version,
            path = %path.display(),
            tested = %format_args!("{}.{} to {}.{}", TESTED_RUNTIMES.start().0, TESTED_RUNTIMES.start().1, TESTED_RUNTIMES.end().0, TESTED_RUNTIMES.end().1),
            "ONNX Runtime loaded is a release the host was not tested with; answers may differ slightly from the documented ones"
        ),
        Err(reason) => tracing::warn!(path = %path.display(), %reason, "ONNX Runtime loaded, its release unknown"),
    }
}

static LOADED_RUNTIME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The release of the ONNX Runtime this process loaded (`1.31.1`), once [`init_onnx_runtime`]
/// has loaded it and could read it.
pub fn loaded_runtime_version() -> Option<&'static str> {
    LOADED_RUNTIME.get().map(String::as_str)
}

/// Whether a version string (`1.31.1`) is a release within [`TESTED_RUNTIMES`].
fn is_tested_runtime(version: &str) -> bool {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => TESTED_RUNTIMES.contains(&(major, minor)),
        _ => false,
    }
}

/// The release string of the ONNX Runtime library at `path`, from its `OrtGetApiBase`.
fn runtime_version(path: &Path) -> Result<String, String> {
    // SAFETY: `ort` has loaded this library and called the same entry point; `OrtGetApiBase`
    // takes nothing and returns a pointer to a static table whose `GetVersionString` returns a
    // static NUL-terminated string (ONNX Runtime's C API). The library stays loaded by `ort`
    // after this handle is dropped.
    unsafe {
        let library = libloading::Library::new(path).map_err(|e| e.to_string())?;
        let api_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            library.get(b"OrtGetApiBase").map_err(|e| e.to_string())?;
        let base = api_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let version = ((*base).GetVersionString)();
        if version.is_null() {
            return Err("GetVersionString returned null".into());
        }
        Ok(std::ffi::CStr::from_ptr(version).to_string_lossy().into_owned())
    }
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

    #[test]
    fn tested_runtimes_are_the_releases_1_22_to_1_31() {
        for tested in ["1.22.1", "1.22.0", "1.31.1", "1.27"] {
            assert!(is_tested_runtime(tested), "{tested}");
        }
        for untested in ["1.21.1", "1.32.0", "2.22.0", "1", "", "v1.31.1", "1.x.0"] {
            assert!(!is_tested_runtime(untested), "{untested:?}");
        }
    }

    /// The library the tests run on (`scripts/setup.sh`'s pinned wheel) is a tested release,
    /// read through its own C API.
    #[test]
    fn the_runtime_the_tests_use_is_a_tested_release() {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/onnxruntime/libonnxruntime.so"));
        let version = runtime_version(&path).unwrap_or_else(|e| panic!("{}: {e} (bash scripts/setup.sh fetches it)", path.display()));
        assert!(is_tested_runtime(&version), "{version}");
        assert!(runtime_version(Path::new("/nonexistent/libonnxruntime.so")).is_err());
    }
}
