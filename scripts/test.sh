#!/usr/bin/env bash
# Sets everything up, then runs every test: unit tests of the guest's QA stages and the
# host, and end-to-end tests through the real guest component, host and model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "test: building the misbehaving test guest" >&2
cargo build --quiet -p qa-guest-fixtures --target wasm32-wasip2 --release
export QA_TEST_MISBEHAVING_GUEST="$PWD/target/wasm32-wasip2/release/misbehaving-guest.wasm"
cargo test -p qa-guest -p qa-host "$@"
