#!/usr/bin/env bash
# Sets up everything the host and guest need, then builds both. Safe to rerun: each step is
# skipped when its result is already there.
#   - the wasm32-wasip2 Rust target;
#   - ONNX Runtime (libonnxruntime.so) from the onnxruntime wheel on PyPI, into .cache/;
#   - the guest component (release, wasm32-wasip2) and the host binary (cargo's dev profile,
#     with optimized dependencies) at target/debug/qa-host; nothing else (the tests and the
#     benchmark are built by scripts/test.sh).
#   bash scripts/setup.sh            # the host with everything
#   bash scripts/setup.sh --no-s3    # the host without S3 (the README's first command: sooner)
# Source scripts/env.sh afterwards (the other scripts do) to point the host at them.
set -euo pipefail
host_features=()
case "${1:-}" in
  "") ;;
  --no-s3) host_features=(--no-default-features) ;;
  *) echo "setup: unknown option $1 (--no-s3, or none)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
source scripts/env.sh

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi

# The library this script manages is refreshed when the pin moves; one set elsewhere is
# only fetched when it is missing.
if [ "$ORT_DYLIB_PATH" = "$PWD/.cache/onnxruntime/libonnxruntime.so" ] || [ ! -f "$ORT_DYLIB_PATH" ]; then
  fetch_onnxruntime "$ORT_DYLIB_PATH" "$ORT_VERSION"
fi

echo "setup: building the guest component" >&2
cargo build --quiet -p qa-guest --target wasm32-wasip2 --release
echo "setup: building the host${host_features:+ without S3}" >&2
# The host alone, with or without S3, compiles every crate it shares with the test build exactly
# as that build does (host/Cargo.toml, "Shared with the test build"), so neither recompiles
# after the other; without S3 only qa-host itself is compiled once more.
cargo build --quiet -p qa-host "${host_features[@]}"
