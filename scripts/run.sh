#!/usr/bin/env bash
# Sets everything up, then answers the original AWS sample's question through the guest:
#   bash scripts/run.sh            # prints the answer JSON ("1886")
#   bash scripts/run.sh serve      # serves POST / on 127.0.0.1:8080 instead
# The host is built without S3 (its SDK is a sixth of the build): models and guests come from
# disk. For `s3://` settings, build the whole host first: `bash scripts/setup.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-s3
source scripts/env.sh
if [ "${1:-}" = serve ]; then
  exec "$QA_HOST_BIN" serve --addr "${QA_ADDR:-127.0.0.1:8080}"
fi
exec "$QA_HOST_BIN" ask --request fixtures/benz.json
