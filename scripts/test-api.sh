#!/usr/bin/env bash
# The API checks that run beside `cargo test` (docs/testing.md, "The API"):
#   1. docs/openapi.yaml is a valid OpenAPI 3.1 document (openapi-spec-validator);
#   2. its request schema, as an API Gateway request model (JSON Schema draft 4), is valid and
#      refuses the bad requests a schema can tell (tools/api/apigw_model.py);
#   3. Schemathesis fuzzes `qa-host serve` on loopback from the document, with a fixed seed and
#      a bounded budget: no server errors, and every status, content type, header and body as
#      documented; requests the document calls invalid are refused;
#   4. the playground in Debian's headless Chromium (tools/api/playground_browser.py), with its
#      screenshots kept under target/api-tests/screenshots/.
# What it needs is installed once and skipped when present: Debian's chromium and
# chromium-driver (apt), and tools/api/requirements.txt (pinned) in .cache/api-venv.
#
#   bash scripts/test-api.sh          # the CI budget
#   bash scripts/test-api.sh --long   # the longer fuzz run docs/testing.md reports
# Exits non-zero when any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "test-api: [$((SECONDS / 60))m$((SECONDS % 60))s] $*" >&2; }

long=false
case "${1:-}" in
  --long) long=true ;;
  "") ;;
  *) echo "usage: $0 [--long]" >&2; exit 2 ;;
esac

out=target/api-tests
mkdir -p "$out"

if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  step "installing Debian's chromium and chromium-driver"
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver > /dev/null
fi

venv=.cache/api-venv
if ! cmp -s tools/api/requirements.txt "$venv/.installed" 2>/dev/null; then
  step "installing tools/api/requirements.txt into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r tools/api/requirements.txt
  cp tools/api/requirements.txt "$venv/.installed"
fi

step "openapi-spec-validator docs/openapi.yaml"
"$venv/bin/openapi-spec-validator" docs/openapi.yaml

step "the request schema as an API Gateway model"
"$venv/bin/python" tools/api/apigw_model.py "$out/qa-request-model.json"

step "building the guest and the host (scripts/setup.sh)"
bash scripts/setup.sh
source scripts/env.sh

# The server, on an ephemeral loopback port, with the model loaded before the first request.
log="$out/serve.log"
QA_PRELOAD=nlp1 QA_LOG=warn "$QA_HOST_BIN" serve --addr 127.0.0.1:0 2> "$log" &
server=$!
trap 'kill "$server" 2> /dev/null || true' EXIT
base=""
for _ in $(seq 1 600); do
  base=$(sed -n 's/^qa-host: listening on //p' "$log")
  [ -n "$base" ] && break
  kill -0 "$server" 2> /dev/null || { cat "$log" >&2; echo "test-api: qa-host serve exited" >&2; exit 1; }
  sleep 0.2
done
[ -n "$base" ] || { cat "$log" >&2; echo "test-api: qa-host serve did not start" >&2; exit 1; }
step "qa-host serve at $base"

# Checks: the four the API must pass, the response headers, and that requests the document
# calls invalid are refused. Not positive_data_acceptance: some requests the schema cannot
# tell from good ones are refused by design (docs/testing.md says which).
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
checks=$checks,response_headers_conformance,negative_data_rejection,unsupported_method
# The budget is examples per operation (Schemathesis's --max-time would instead repeat fuzzing
# until the time is spent); `timeout` only guards against a hung run.
examples=40
if $long; then examples=1000; fi
step "schemathesis --max-examples $examples --seed 1"
timeout 3600 "$venv/bin/schemathesis" --config-file tools/api/schemathesis.toml run docs/openapi.yaml --url "$base" --checks "$checks" --seed 1 \
  --max-examples "$examples" --workers 1 --request-timeout 120 --generation-database none --no-color \
  --report junit --report-junit-path "$out/schemathesis.xml"

step "the playground in headless Chromium"
"$venv/bin/python" tools/api/playground_browser.py "$base" "$out/screenshots"

# The server must still be serving, and have written no panic.
"$venv/bin/python" - "$base" << 'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/health", timeout=30) as response:
    assert response.status == 200, response.status
EOF
if grep -q "panicked" "$log"; then
  cat "$log" >&2
  echo "test-api: qa-host serve panicked" >&2
  exit 1
fi
step "passed (reports and screenshots in $out)"
