# Environment shared by the scripts: where setup.sh puts ONNX Runtime and the builds.
# Source it from the repository root.
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so}"
export QA_GUEST="${QA_GUEST:-$PWD/target/wasm32-wasip2/release/qa-guest.wasm}"
export QA_MODELS_DIR="${QA_MODELS_DIR:-$PWD/models}"
export QA_CACHE_DIR="${QA_CACHE_DIR:-$PWD/target/qa-cache}"
QA_HOST_BIN="$PWD/target/debug/qa-host"

# ONNX Runtime: the C library inside PyPI's onnxruntime wheel, one pin for every script (the
# Dockerfile has its own ARG). ort 2.0.0-rc.10 speaks the C API of 1.22, which later releases
# keep; the host logs the release it loaded and warns outside the tested ones.
ORT_VERSION=1.31.1

# fetch_onnxruntime DEST VERSION [pip download options]: that release's libonnxruntime.so at
# DEST, fetched again when DEST.version names another release. Copied then renamed, so an
# interrupted fetch never leaves a truncated library behind.
fetch_onnxruntime() {
  local dest=$1 version=$2 wheels tmp
  shift 2
  if [ -f "$dest" ] && [ "$(cat "$dest.version" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  echo "fetching ONNX Runtime $version from the onnxruntime wheel on PyPI into $dest" >&2
  wheels=$(mktemp -d)
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" "onnxruntime==$version" -d "$wheels"
  python3 -m zipfile -e "$(ls "$wheels"/onnxruntime-"$version"-*.whl | head -n 1)" "$tmp"
  mkdir -p "$(dirname "$dest")"
  cp "$tmp/onnxruntime/capi/libonnxruntime.so.$version" "$dest.partial"
  mv "$dest.partial" "$dest"
  echo "$version" > "$dest.version"
  rm -rf "$wheels" "$tmp"
}
