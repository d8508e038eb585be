#!/usr/bin/env bash
# Builds the function as a Lambda zip package (runtime provided.al2023, PackageType Zip), the
# way Rust Lambda users ship: the bootstrap cross-compiled by cargo-lambda (with zig, for
# Amazon Linux 2023's glibc), for one architecture:
#
#   bash scripts/package-lambda.sh x86_64|arm64 [--with-models] [--profile release|debug]
#                                  [--bootstrap FILE] [--out FILE]
#
# The zip holds, at its root (Lambda unpacks it into /var/task, LAMBDA_TASK_ROOT, where the
# host looks for each by default):
#   bootstrap                                  qa-host for that architecture
#   libonnxruntime.so                          ONNX Runtime from PyPI's wheel for it (scripts/env.sh's
#                                              ORT_VERSION)
#   qa-guest.wasm                              the guest component
#   qa-guest.wasm.<sha16>[.<kind>].cwasm       the guest, the instrumented guest and, with
#                                              --with-models, each model's snapshot, compiled
#                                              for that architecture (`compile-guest --target`)
#   models/                                    with --with-models: models/ (else the models
#                                              come from S3 or EFS, deploy/*-zip.yaml)
# It prints the zip's absolute path, then (on stderr) its size zipped and unzipped (Lambda
# allows 250 MB unzipped).
# Default output: target/lambda/qa-<arch>[-models].zip. `--profile debug` builds with cargo's
# `package-debug` profile, nothing optimized (a faster build for tests; never deploy it); it
# has its own build directory, so it can build while other cargo commands run here.
# `--bootstrap FILE` packages a qa-host already built for that architecture instead of
# building one.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: $0 x86_64|arm64 [--with-models] [--profile release|debug] [--bootstrap FILE] [--out FILE]"
arch=${1:?$usage}
shift
with_models=false
profile=release
bootstrap=
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --with-models) with_models=true; shift ;;
    --profile) profile=${2:?$usage}; shift 2 ;;
    --bootstrap) bootstrap=${2:?$usage}; shift 2 ;;
    --out) out=${2:?$usage}; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
case "$arch" in
  x86_64) triple=x86_64-unknown-linux-gnu; wheel_platform=manylinux_2_28_x86_64 ;;
  arm64) triple=aarch64-unknown-linux-gnu; wheel_platform=manylinux_2_28_aarch64 ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
case "$profile" in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=(--profile package-debug) ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
# Whether this run builds the bootstrap (and so needs the tools, and a host and guest here).
build_here=$([ -z "$bootstrap" ] && echo true || echo false)
suffix=$arch$([ "$with_models" = true ] && echo -models || true)
out=${out:-target/lambda/qa-$suffix.zip}

# cargo-lambda and zig (its cross-compiler) from PyPI, into the tools environment.
TOOLS="cargo-lambda==1.9.2 ziglang==0.17.1"
VENV=.cache/tools-venv
if $build_here && [ "$(cat "$VENV/.installed-package" 2>/dev/null)" != "$TOOLS" ]; then
  echo "package: installing $TOOLS from PyPI" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet $TOOLS
  echo "$TOOLS" > "$VENV/.installed-package"
fi
! $build_here || rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"

if $build_here; then
  echo "package: building the bootstrap for $triple ($profile)" >&2
  # cargo-zigbuild finds zig as `python3 -m ziglang`: the tools environment's python first.
  PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/cargo-lambda" lambda build "${cargo_profile[@]}" --target "$triple" -p qa-host \
    --lambda-dir "target/lambda/$arch-$profile" --flatten qa-host >&2
  bootstrap=target/lambda/$arch-$profile/bootstrap
fi

# The guest, and a host for this machine that compiles the guest for the target (already
# there when a bootstrap is given: the tests package their own build). After the cross
# build, which does not need them, so that the two can be built at the same time.
! $build_here || bash scripts/setup.sh
source scripts/env.sh

lib=.cache/onnxruntime-$arch/libonnxruntime.so
if [ "$arch" = x86_64 ] && [ "$(uname -m)" = x86_64 ]; then
  lib=$ORT_DYLIB_PATH
else
  fetch_onnxruntime "$lib" "$ORT_VERSION" --platform "$wheel_platform" --python-version 311
fi

stage=target/lambda/stage-$suffix
rm -rf "$stage"
mkdir -p "$stage/models"
cp "$bootstrap" "$stage/bootstrap"
cp "$lib" "$stage/libonnxruntime.so"
cp target/wasm32-wasip2/release/qa-guest.wasm "$stage/qa-guest.wasm"
if [ "$with_models" = true ]; then
  cp -r models/. "$stage/models/"
  # Each model's graph optimized once here instead of at every cold start (its cold
  # load in about 0.88x the time; docs/performance.md, "Cold start"): by this machine's ONNX Runtime,
  # the release both packages carry (scripts/env.sh), at the level whose saved graphs hold no
  # machine-specific layouts, so the arm64 package's ONNX Runtime loads them as saved too.
  find "$stage/models" -mindepth 1 -maxdepth 1 -type d -exec "$QA_HOST_BIN" optimize-model {} + > /dev/null
fi
echo "package: compiling the guest for $triple" >&2
QA_GUEST="$PWD/$stage/qa-guest.wasm" QA_MODELS_DIR="$PWD/$stage/models" QA_CACHE_DIR="$PWD/target/qa-cache-package" \
  QA_MODELS= QA_MODELS_FILE= "$QA_HOST_BIN" compile-guest --target "$triple" >&2
[ "$with_models" = true ] || rmdir "$stage/models"

mkdir -p "$(dirname "$out")"
python3 - "$stage" "$out" <<'PY'
import os, sys, zipfile
stage, out = sys.argv[1], sys.argv[2]
unzipped = 0
with zipfile.ZipFile(out + ".partial", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for root, dirs, files in os.walk(stage):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            info = zipfile.ZipInfo.from_file(path, os.path.relpath(path, stage))
            # Lambda runs bootstrap as is: keep the mode bits (0755 for it, 0644 the rest).
            info.external_attr = (0o755 if name == "bootstrap" else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                data = f.read()
            unzipped += len(data)
            z.writestr(info, data, compresslevel=9)
os.replace(out + ".partial", out)
print(os.path.abspath(out))
print(f"package: {os.path.getsize(out) / 1e6:.1f} MB zipped, {unzipped / 1e6:.1f} MB unzipped (limit 250 MB)", file=sys.stderr)
PY
