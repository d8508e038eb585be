//! Shared set-up for the end-to-end tests: the real guest component, the real model in
//! `models/`, and ONNX Runtime, where `scripts/setup.sh` puts them. A missing part fails the
//! test with instructions; nothing is skipped.
#![allow(dead_code, reason = "each test file uses its own subset")]

use qa_host::config::HostConfig;
use qa_host::service::QaService;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

fn required(var: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.is_file(),
        "{} not found ({var}); run `bash scripts/test.sh`, which builds and fetches it",
        path.display()
    );
    path
}

pub fn onnxruntime() -> PathBuf {
    required("ORT_DYLIB_PATH", workspace().join(".cache/onnxruntime/libonnxruntime.so"))
}

pub fn qa_guest() -> PathBuf {
    required("QA_GUEST", workspace().join("target/wasm32-wasip2/release/qa-guest.wasm"))
}

pub fn misbehaving_guest() -> PathBuf {
    required("QA_TEST_MISBEHAVING_GUEST", workspace().join("target/wasm32-wasip2/release/misbehaving-guest.wasm"))
}

pub fn models_dir() -> PathBuf {
    workspace().join("models")
}

/// A configuration over the real parts, with the compiled-guest cache in `target/`.
pub fn config(guest: PathBuf, models_dir: PathBuf) -> HostConfig {
    HostConfig {
        models_dir,
        default_model: None,
        guest_wasm: guest,
        cache_dir: workspace().join("target/qa-cache"),
        onnxruntime: Some(onnxruntime()),
        guest_deadline: Duration::from_secs(60),
        guest_memory_bytes: 512 << 20,
        inference_threads: 0,
        preload: Vec::new(),
        model_cache_mb: None,
    }
}

pub fn service(config: &HostConfig) -> Arc<QaService> {
    Arc::new(QaService::start(config).unwrap_or_else(|e| panic!("service failed to start: {e}")))
}

/// The original AWS sample's request.
pub fn benz_request() -> serde_json::Value {
    let text = std::fs::read_to_string(workspace().join("fixtures/benz.json")).expect("fixtures/benz.json");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A model directory whose files are the real model's (hard links, falling back to copies).
pub fn link_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["model.onnx", "tokenizer.json", "config.json"] {
        if std::fs::hard_link(from.join(file), to.join(file)).is_err() {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
}
