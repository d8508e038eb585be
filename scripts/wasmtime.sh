#!/usr/bin/env bash
# Prints the path of a wasmtime CLI (48.0.8) with the ONNX wasi-nn backend, building it first
# when the cached copy is missing or was built from other sources. The build (about 20 minutes
# on 2 cores) and the binary live in ~/.cache/qa-tools, outside the repository, and are reused
# by later runs on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
version=48.0.8
dest=${QA_TOOLS_HOME:-$HOME/.cache/qa-tools}/wasmtime-onnx-$version
bin=$dest/bin/wasmtime
want=$(cat tools/wasmtime-onnx/Cargo.toml tools/wasmtime-onnx/Cargo.lock tools/wasmtime-onnx/src/main.rs | sha256sum | cut -d' ' -f1)
if [ ! -x "$bin" ] || [ "$(cat "$dest/.sources" 2>/dev/null)" != "$want" ]; then
  echo "wasmtime: building wasmtime $version with ONNX into $dest (once; about 20 minutes on 2 cores)" >&2
  CARGO_TARGET_DIR="$dest/target" cargo build --quiet --release --locked --manifest-path tools/wasmtime-onnx/Cargo.toml >&2
  mkdir -p "$dest/bin"
  cp "$dest/target/release/wasmtime" "$bin.partial"
  mv "$bin.partial" "$bin"
  echo "$want" > "$dest/.sources"
fi
echo "$bin"
