#!/usr/bin/env bash
# Assembles the container image's file layout from this machine's builds, without Docker:
#
#   bash scripts/image-layout.sh [--target-dir DIR] [--onnxruntime FILE] OUT_DIR [debug|release]
#
# OUT_DIR gets what the Dockerfile's final stage puts in the image, under the same paths:
#   OUT_DIR/var/runtime/bootstrap                     <target-dir>/<profile>/qa-host
#   OUT_DIR/var/task/libonnxruntime.so                --onnxruntime, else $ORT_DYLIB_PATH,
#                                                     else .cache/onnxruntime/libonnxruntime.so
#   OUT_DIR/var/task/qa-guest.wasm                    <target-dir>/wasm32-wasip2/release/qa-guest.wasm
#   OUT_DIR/var/task/qa-guest.wasm.<sha16>[.<kind>].cwasm
#                                                     written by `bootstrap compile-guest`: the
#                                                     guest, the instrumented guest, a snapshot
#                                                     per model in the layout
#   OUT_DIR/var/task/models/                          models/ (only models/README.md when
#                                                     WITH_MODELS=false, as the build argument),
#                                                     each graph optimized by `bootstrap
#                                                     optimize-model`
# and OUT_DIR/env: the base image's LAMBDA_TASK_ROOT and LAMBDA_RUNTIME_DIR, then the final
# stage's ENV, one KEY=VALUE a line (unquoted), each ${VAR} expanded as in the build and each
# value under /var/task or /var/runtime moved under OUT_DIR, so the paths in it are absolute
# and inside OUT_DIR (LAMBDA_TASK_ROOT=OUT_DIR/var/task, QA_GUEST=OUT_DIR/var/task/qa-guest.wasm,
# ...). It prints the path of OUT_DIR/env on standard output.
#
# The layout is derived from the Dockerfile: the script reads its final stage and fails on any
# COPY source, or any instruction other than COPY, ENV, CMD, ARG and LABEL, that it does not
# know, so the image and this layout cannot drift apart unnoticed.
#
# Defaults: profile debug (what scripts/setup.sh builds), target dir $CARGO_TARGET_DIR or
# target/ of this repository. OUT_DIR must be absent, empty, or an earlier layout (replaced).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

target_dir=${CARGO_TARGET_DIR:-$repo/target}
onnxruntime=${ORT_DYLIB_PATH:-$repo/.cache/onnxruntime/libonnxruntime.so}
usage="usage: $0 [--target-dir DIR] [--onnxruntime FILE] OUT_DIR [debug|release]"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target-dir) target_dir=${2:?$usage}; shift 2 ;;
    --onnxruntime) onnxruntime=${2:?$usage}; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 2 ] || { echo "$usage" >&2; exit 2; }
out=${args[0]}
profile=${args[1]:-debug}
case "$profile" in debug|release) ;; *) echo "$usage" >&2; exit 2 ;; esac

mkdir -p "$out"
out=$(cd "$out" && pwd)
target_dir=$(cd "$target_dir" && pwd)

exec python3 - "$repo" "$out" "$profile" "$target_dir" "$onnxruntime" "${WITH_MODELS:-}" <<'PY'
import os
import re
import shlex
import shutil
import subprocess
import sys

repo, out, profile, target_dir, onnxruntime, with_models_env = sys.argv[1:7]


def fail(message):
    sys.exit(f"image-layout: {message}")


def instructions(path):
    """(line number, instruction text) with continuations joined and comments dropped."""
    result, start, text = [], None, ""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if stripped.startswith("#") or (start is None and not stripped):
                continue  # comments (also inside a continuation, as Docker reads them), blanks
            if start is None:
                start = number
            if stripped.endswith("\\"):
                text += stripped[:-1].strip() + " "
                continue
            result.append((start, (text + stripped).strip()))
            start, text = None, ""
    return result


dockerfile = os.path.join(repo, "Dockerfile")
all_instructions = instructions(dockerfile)
froms = [i for i, (_, text) in enumerate(all_instructions) if text.split()[0].upper() == "FROM"]
if not froms:
    fail("Dockerfile has no FROM")
global_args = {}
for _, text in all_instructions[: froms[0]]:
    keyword, _, rest = text.partition(" ")
    if keyword.upper() == "ARG" and "=" in rest:
        key, _, value = rest.strip().partition("=")
        global_args[key] = value
final_from = all_instructions[froms[-1]]
if not re.fullmatch(r"FROM public\.ecr\.aws/lambda/provided:al2023", final_from[1]):
    fail(f"Dockerfile:{final_from[0]}: the final stage is not FROM public.ecr.aws/lambda/provided:al2023 "
         "(LAMBDA_TASK_ROOT and LAMBDA_RUNTIME_DIR below are that image's): update this script")

with_models = with_models_env or global_args.get("WITH_MODELS", "")
if with_models not in ("true", "false"):
    fail(f"WITH_MODELS={with_models!r}: true or false")

# The base image's environment; ${VAR}s expand to image paths, as in the build.
env = {"LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime"}
env_keys = list(env)
IMAGE_ROOTS = ("/var/task", "/var/runtime")  # what the final stage fills, so under OUT_DIR here


def in_layout(image_path):
    """OUT_DIR + image_path for paths under IMAGE_ROOTS; anything else is left as it is."""
    if any(image_path == r or image_path.startswith(r + "/") for r in IMAGE_ROOTS):
        return out + image_path
    return image_path


def expand(value, where):
    def var(match):
        name = match.group(1) or match.group(2)
        if name not in env:
            fail(f"{where}: ${name} is not set in the final stage")
        return env[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, value)


models = os.path.join(repo, "models")
# (stage, source in that stage) -> where the file comes from here. A source not in this table
# stops the script: the Dockerfile gained a file that this layout would miss.
SOURCES = {
    ("build", "/out/bootstrap"): os.path.join(target_dir, profile, "qa-host"),
    ("build", "/out/libonnxruntime.so"): onnxruntime,
    ("build", "/out/qa-guest.wasm"): os.path.join(target_dir, "wasm32-wasip2/release/qa-guest.wasm"),
    ("build", "/out/qa-guest.wasm.*.cwasm"): "compile-guest",
    ("models", "/models/"): models if with_models == "true" else os.path.join(models, "README.md"),
    # The build stage's copy of the models, each graph optimized by the bootstrap (below).
    ("build", "/models/"): models if with_models == "true" else os.path.join(models, "README.md"),
}
OPTIMIZED = ("build", "/models/")

# Start from an empty OUT_DIR, or replace an earlier layout.
leftovers = set(os.listdir(out)) - {"var", "env"}
if leftovers:
    fail(f"{out} holds other files ({', '.join(sorted(leftovers))}); give an empty or new directory")
shutil.rmtree(os.path.join(out, "var"), ignore_errors=True)
if os.path.exists(os.path.join(out, "env")):
    os.remove(os.path.join(out, "env"))

copied, compile_into, optimize_into = [], None, None
for number, text in all_instructions[froms[-1] + 1 :]:
    where = f"Dockerfile:{number}"
    keyword, _, rest = text.partition(" ")
    keyword = keyword.upper()
    if keyword in ("CMD", "ARG", "LABEL"):
        continue  # no files, no environment
    if keyword == "ENV":
        words = shlex.split(rest)
        if len(words) >= 2 and "=" not in words[0]:
            words = [f"{words[0]}={' '.join(words[1:])}"]  # the legacy `ENV KEY value` form
        updates = {}
        for word in words:
            key, eq, value = word.partition("=")
            if not eq:
                fail(f"{where}: cannot read ENV {word!r}")
            updates[key] = expand(value, where)
        for key, value in updates.items():
            if key not in env_keys:
                env_keys.append(key)
            env[key] = value
        continue
    if keyword != "COPY":
        fail(f"{where}: {keyword} in the final stage is not known to this script: {text}")
    words = shlex.split(rest)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    stage = "context"
    for flag in flags:
        if flag.startswith("--from="):
            stage = flag.split("=", 1)[1]
        elif flag != "--link":
            fail(f"{where}: COPY flag {flag} is not known to this script: {text}")
    if len(paths) < 2:
        fail(f"{where}: cannot read {text}")
    *sources, dest = paths
    dest = expand(dest, where)
    if not dest.startswith("/") or in_layout(dest) == dest:
        fail(f"{where}: destination {dest} is not under {' or '.join(IMAGE_ROOTS)}: update this script")
    dest = in_layout(dest)
    for source in sources:
        local = SOURCES.get((stage, source))
        if local is None:
            fail(f"{where}: COPY of {source} from stage {stage!r} is not known to this script: {text}")
        if dest.endswith("/") or len(sources) > 1:
            dest_dir = dest
            target = dest if source.endswith("/") else os.path.join(dest, os.path.basename(source))
        else:
            dest_dir, target = os.path.dirname(dest), dest
        if local == "compile-guest":
            compile_into = dest_dir.rstrip("/")
            continue
        if (stage, source) == OPTIMIZED:
            optimize_into = target.rstrip("/")
        if not os.path.exists(local):
            fail(f"{where}: {local} (for {source}) does not exist: build it first (scripts/setup.sh builds debug)")
        if os.path.isdir(local):
            shutil.copytree(local, target.rstrip("/"), dirs_exist_ok=True)
        elif source.endswith("/"):  # a directory stage with only this file in it
            os.makedirs(target, exist_ok=True)
            shutil.copy2(local, os.path.join(target, os.path.basename(local)))
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(local, target)
        copied.append(os.path.relpath(target.rstrip("/"), out))

layout_env = {key: in_layout(env[key]) for key in env_keys}
bootstrap = in_layout("/var/runtime/bootstrap")
if not os.access(bootstrap, os.X_OK):
    fail(f"the final stage does not install an executable {bootstrap}")
run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **layout_env}
if optimize_into is not None:
    # Each model's graph optimized by the bootstrap, as the image build does, before the guest's
    # snapshots are made from them. The copies are new files, so the repository's stay as they are.
    dirs = [os.path.join(optimize_into, d) for d in sorted(os.listdir(optimize_into)) if os.path.isdir(os.path.join(optimize_into, d))]
    if dirs and subprocess.run([bootstrap, "optimize-model", *dirs], env=run_env, stdout=subprocess.DEVNULL).returncode != 0:
        fail(f"{bootstrap} optimize-model failed")
if compile_into is not None:
    guest = os.path.join(compile_into, "qa-guest.wasm")
    if not os.path.isfile(guest):
        fail(f"the compiled guest goes to {compile_into}, but no qa-guest.wasm was copied there")
    # The bootstrap precompiles the guest beside it, as the image build does (its own env only).
    result = subprocess.run([bootstrap, "compile-guest", "--guest", guest], env=run_env,
                            stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        fail(f"{bootstrap} compile-guest failed ({result.returncode})")
    copied += [os.path.relpath(line, out) for line in result.stdout.split()]

with open(os.path.join(out, "env"), "w") as f:
    for key in env_keys:
        if "\n" in layout_env[key]:
            fail(f"ENV {key} has a line break")
        f.write(f"{key}={layout_env[key]}\n")
for path in copied:
    print(f"image-layout: {path}", file=sys.stderr)
print(f"image-layout: env ({', '.join(env_keys)})", file=sys.stderr)
print(os.path.join(out, "env"))
PY
