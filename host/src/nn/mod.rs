//! The wasi-nn side of the host: ONNX Runtime set-up, the graphs a request may see, and the
//! backend that runs them ([`onnx`]).
//!
//! Graph storage is a separate seam from graph making, as in wasmtime-wasi-nn: a request's
//! guest gets a registry holding exactly the graph the request named ([`SingleGraph`]), so it
//! can neither load other models nor load arbitrary bytes.

pub mod onnx;

use std::path::{Path, PathBuf};
use wasmtime_wasi_nn::{Graph, GraphRegistry};

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

/// Finds `libonnxruntime.so` and initialises ONNX Runtime with it, once per process.
///
/// Search order: `explicit` (the `--onnxruntime` flag or `ORT_DYLIB_PATH`), beside the
/// executable, `/opt/lib` (Lambda layers) and `/usr/local/lib`.
pub fn init_onnx_runtime(explicit: Option<&Path>) -> Result<PathBuf, NnError> {
    static INIT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path.to_path_buf()],
        None => {
            let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
            exe_dir
                .map(|d| d.join("libonnxruntime.so"))
                .into_iter()
                .chain(["/opt/lib/libonnxruntime.so", "/usr/local/lib/libonnxruntime.so"].map(PathBuf::from))
                .collect()
        }
    };
    let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
        let looked = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(NnError::RuntimeMissing { looked });
    };
    let outcome = INIT.get_or_init(|| {
        // `ort` panics when the library cannot be opened or is too old; turn that into an error.
        let committed = std::panic::catch_unwind(|| ort::init_from(path.display().to_string()).commit());
        match committed {
            Ok(Ok(_)) => Ok(path.clone()),
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

thread_local! {
    static LAST_BACKEND_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Remembers the detail of a backend failure on this thread. wasi-nn hands the guest only the
/// top-level message of a backend error ("Failed while accessing backend"), so the host
/// recovers the detail here, on the thread that ran the guest call, for its error report.
pub(crate) fn record_backend_error(detail: &str) {
    LAST_BACKEND_ERROR.with_borrow_mut(|last| *last = Some(detail.to_string()));
}

/// Takes the detail recorded by the last backend failure on this thread, if any.
pub fn take_backend_error() -> Option<String> {
    LAST_BACKEND_ERROR.with_borrow_mut(Option::take)
}

/// The registry a guest sees during one request: one graph, under the model's name.
pub struct SingleGraph {
    name: String,
    graph: Graph,
}

impl SingleGraph {
    pub fn new(name: impl Into<String>, graph: Graph) -> Self {
        Self { name: name.into(), graph }
    }
}

impl GraphRegistry for SingleGraph {
    fn get(&self, name: &str) -> Option<&Graph> {
        (name == self.name).then_some(&self.graph)
    }
    fn get_mut(&mut self, name: &str) -> Option<&mut Graph> {
        (name == self.name).then_some(&mut self.graph)
    }
}

/// A registry with no graphs: what an idle guest instance holds between requests.
pub struct NoGraphs;

impl GraphRegistry for NoGraphs {
    fn get(&self, _: &str) -> Option<&Graph> {
        None
    }
    fn get_mut(&mut self, _: &str) -> Option<&mut Graph> {
        None
    }
}
