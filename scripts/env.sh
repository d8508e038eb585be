# Environment shared by the scripts: where setup.sh puts ONNX Runtime and the builds.
# Source it from the repository root.
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so}"
export QA_GUEST="${QA_GUEST:-$PWD/target/wasm32-wasip2/release/qa-guest.wasm}"
export QA_MODELS_DIR="${QA_MODELS_DIR:-$PWD/models}"
export QA_CACHE_DIR="${QA_CACHE_DIR:-$PWD/target/qa-cache}"
QA_HOST_BIN="$PWD/target/debug/qa-host"
