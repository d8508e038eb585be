#!/usr/bin/env bash
# Sets up everything the host and guest need, then builds both. Safe to rerun: each step is
# skipped when its result is already there.
#   - the wasm32-wasip2 Rust target;
#   - ONNX Runtime (libonnxruntime.so) from the onnxruntime wheel on PyPI, into .cache/;
#   - the guest component (release, wasm32-wasip2) and the host binary (cargo's dev profile,
#     with optimized dependencies) at target/debug/qa-host; nothing else (the tests and the
#     benchmark are built by scripts/test.sh).
# Source scripts/env.sh afterwards (the other scripts do) to point the host at them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

ORT_VERSION=1.22.1

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi

if [ ! -f "$ORT_DYLIB_PATH" ]; then
  echo "setup: fetching ONNX Runtime $ORT_VERSION from the onnxruntime wheel on PyPI" >&2
  wheels=.cache/wheels
  mkdir -p "$wheels" "$(dirname "$ORT_DYLIB_PATH")"
  python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$ORT_VERSION" -d "$wheels"
  wheel=$(ls "$wheels"/onnxruntime-"$ORT_VERSION"-*.whl | head -n 1)
  tmp=$(mktemp -d)
  python3 -m zipfile -e "$wheel" "$tmp"
  # Copy then rename, so an interrupted setup never leaves a truncated library behind.
  cp "$tmp"/onnxruntime/capi/libonnxruntime.so."$ORT_VERSION" "$ORT_DYLIB_PATH.partial"
  mv "$ORT_DYLIB_PATH.partial" "$ORT_DYLIB_PATH"
  rm -rf "$tmp"
fi

echo "setup: building the guest component" >&2
cargo build --quiet -p qa-guest --target wasm32-wasip2 --release
echo "setup: building the host" >&2
# The host alone compiles every crate it shares with the test build exactly as that build does
# (host/Cargo.toml, "Shared with the test build"), so neither recompiles after the other.
cargo build --quiet -p qa-host
