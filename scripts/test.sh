#!/usr/bin/env bash
# Sets everything up, then runs every test: unit tests of the guest's QA stages and the
# host, and end-to-end tests through the real guest component, host and model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# cargo-lambda's Lambda Runtime API emulator, from PyPI, for the Lambda tests.
CARGO_LAMBDA_VERSION=1.9.2
export CARGO_LAMBDA="$PWD/.cache/tools-venv/bin/cargo-lambda"
if ! "$CARGO_LAMBDA" lambda --version 2>/dev/null | grep -q "$CARGO_LAMBDA_VERSION"; then
  echo "test: installing cargo-lambda $CARGO_LAMBDA_VERSION from PyPI" >&2
  python3 -m venv .cache/tools-venv
  .cache/tools-venv/bin/pip install --quiet "cargo-lambda==$CARGO_LAMBDA_VERSION"
fi

echo "test: building the misbehaving test guest" >&2
cargo build --quiet -p qa-guest-fixtures --target wasm32-wasip2 --release
export QA_TEST_MISBEHAVING_GUEST="$PWD/target/wasm32-wasip2/release/misbehaving-guest.wasm"
cargo test -p qa-guest -p qa-host "$@"
