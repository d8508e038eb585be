"""Benchmarks side by side: this project against the native Rust pipeline, the bare ONNX
Runtime floor and the two Python ways of doing the same, on the same model and inputs,
measured in one run. Prints a markdown table (medians, p95, ratios, cold start, peak RSS),
the targets as pass/fail lines, whether the rows' answers agree, the machine and the exact
command; writes every sample to --out. Protocol and rows: bench/README.md.

    source scripts/env.sh && python3 bench/compare.py            # everything, defaults
    python3 bench/compare.py --smoke --rows 1,4,5                 # tiny sizes, a quick check

Only the standard library here; rows 4 and 5 run bench/rows.py under --python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME_QA = Path.home() / ".cache/qa"

ROWS = {
    "1": ("project", "this project: qa-host + wasm guest, request in → answer out"),
    "2": ("native", "same tokenize + decode natively in Rust with ort, no wasm"),
    "3": ("ort", "bare ONNX Runtime `run` on the same token tensors (the floor)"),
    "4": ("pipeline", "Python: transformers QA pipeline, PyTorch (fp32 weights)"),
    "5": ("onnx", "Python: onnxruntime + tokenizers + numpy"),
}
RUST_ROWS = {"1", "2", "3"}
# The project's defaults (its one list of them), which every row runs with.
SETTINGS = {key: value for key, value in json.loads((ROOT / "guest/options/defaults.json").read_text()).items()
            if key in ("top_k", "max_answer_len", "max_seq_len", "doc_stride", "max_question_len")}


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


# --- inputs ----------------------------------------------------------------------------------


def build_inputs(benz: Path, squad: Path, k: int, n_long: int, long_chars: int) -> tuple[list[dict], list[str]]:
    """The sample question, K SQuAD questions spread evenly over the file, and n_long long
    inputs (a context of several paragraphs). Deterministic: same files, same arguments, same
    inputs."""
    notes: list[str] = []
    sample = json.loads(benz.read_text())
    items = [{"id": "benz", "kind": "single", "question": sample["question"], "context": sample["context"],
              "gold": [sample["expected"]] if sample.get("expected") else []}]
    data = json.loads(squad.read_text())["data"]
    flat = [(p, q) for a in data for p in a["paragraphs"] for q in p["qas"]]
    if k > len(flat):
        notes.append(f"--questions {k} > {len(flat)} questions in {squad.name}: using {len(flat)}")
        k = len(flat)
    for i in range(k):
        p, q = flat[i * len(flat) // k]
        items.append({"id": q["id"], "kind": "single", "question": q["question"], "context": p["context"],
                      "gold": [a["text"] for a in q.get("answers", [])]})

    # Long contexts: consecutive paragraphs of one article when the file has articles long
    # enough; the repository's fixture has one paragraph per article, so there the paragraphs
    # of all articles are concatenated (in rotated order, cycling when they run out).
    articles = [a for a in data if len(a["paragraphs"]) >= 2 and sum(len(p["context"]) for p in a["paragraphs"]) >= long_chars]
    all_paragraphs = [p for a in data for p in a["paragraphs"]]
    if n_long and not articles:
        notes.append(f"long inputs: no article in {squad.name} has {long_chars}+ characters of paragraphs; "
                     "each long context is paragraphs of several articles concatenated (cycled, so some repeat)")
    for j in range(n_long):
        chosen: list[dict] = []
        if articles:
            article = articles[j * len(articles) // n_long]
            for p in article["paragraphs"]:
                chosen.append(p)
                if sum(len(c["context"]) for c in chosen) >= long_chars:
                    break
            source = f"{article['title']}: paragraphs 1-{len(chosen)}"
            pos = [len(chosen) - 1, 0, len(chosen) // 2][j % 3]
            while not chosen[pos]["qas"]:
                pos = (pos + 1) % len(chosen)
        else:
            # The question's paragraph once, the others cycled around it to the length asked.
            qi = next(i % len(all_paragraphs) for i in range(j * len(all_paragraphs) // n_long, 10**6)
                      if all_paragraphs[i % len(all_paragraphs)]["qas"])
            others = [p for i, p in enumerate(all_paragraphs) if i != qi] or [all_paragraphs[qi]]
            total, i = len(all_paragraphs[qi]["context"]), 0
            while total < long_chars:
                nxt = others[(qi + i) % len(others)]
                chosen.append(nxt)
                total += len(nxt["context"])
                i += 1
            pos = [len(chosen), 0, len(chosen) // 2][j % 3]
            chosen.insert(pos, all_paragraphs[qi])
            source = (f"{len(chosen)} paragraphs of several articles; the question's paragraph "
                      f"({all_paragraphs[qi]['qas'][0]['id'][:8]}…) is number {pos + 1}, some others repeat")
        q = chosen[pos]["qas"][-1]
        items.append({"id": f"long-{j}", "kind": "long", "question": q["question"],
                      "context": "\n\n".join(p["context"] for p in chosen),
                      "gold": [a["text"] for a in q.get("answers", [])], "source": source})
    return items, notes


# --- processes -------------------------------------------------------------------------------


class Proc:
    """A child process whose stdout is read line by line, reaped with os.wait4 for its peak
    RSS (ru_maxrss, KiB on Linux), killed if it runs past its timeout."""

    def __init__(self, argv: list[str], env: dict, stderr_path: Path, timeout: float):
        self.stderr_file = stderr_path.open("wb")
        self.started = time.perf_counter()
        self.p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self.stderr_file,
                                  stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
        self.timed_out = False
        self.timer = threading.Timer(timeout, self._kill)
        self.timer.daemon = True
        self.timer.start()
        self.stderr_path = stderr_path

    def _kill(self) -> None:
        self.timed_out = True
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1e3

    def reap(self) -> tuple[int, float, float]:
        """(exit code, ms from spawn to exit, peak RSS MiB)."""
        rest = self.p.stdout.read()  # drain so the child never blocks on a full pipe
        self.leftover = rest
        _, status, usage = os.wait4(self.p.pid, 0)
        ms = self.elapsed_ms()
        self.timer.cancel()
        self.p.returncode = os.waitstatus_to_exitcode(status)
        self.stderr_file.close()
        return self.p.returncode, ms, usage.ru_maxrss / 1024

    def stderr_tail(self, n: int = 600) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""


def failure(proc: Proc, what: str, code: int | None = None) -> str:
    if proc.timed_out:
        return f"{what}: timed out"
    tail = proc.stderr_tail(300).replace("\n", " ⏎ ")
    return f"{what}: exit {code}" + (f" ({tail})" if tail else "")


def run_runner(argv: list[str], env: dict, logs: Path, tag: str, timeout: float, cold: bool) -> dict:
    """One runner process under the protocol. cold: --iters 0, time to the "first" line."""
    proc = Proc(argv, env, logs / f"{tag}.stderr", timeout)
    first = done = None
    first_ms = None
    bad_lines: list[str] = []
    for line in proc.p.stdout:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            bad_lines.append(line[:200])
            continue
        if event.get("event") == "first" and first is None:
            first_ms = proc.elapsed_ms()
            first = event
        elif event.get("event") == "done":
            done = event
    code, exit_ms, rss = proc.reap()
    result = {"argv": argv, "exit_code": code, "first_ms": first_ms, "exit_ms": exit_ms, "peak_rss_mib": rss,
              "first": first, "stderr_tail": proc.stderr_tail()}
    if bad_lines:
        result["non_json_stdout"] = bad_lines[:5]
    if done:
        result["done"] = done
    if code != 0 or first is None or (not cold and done is None):
        missing = "no \"first\" line" if first is None else ("no \"done\" line" if not cold and done is None else "")
        result["error"] = failure(proc, f"{tag} failed", code) + (f"; {missing}" if missing else "")
    return result


def run_host_cold(qa_host: Path, guest: Path, models_dir: Path, request: Path, cache: Path, env: dict,
                  logs: Path, tag: str, timeout: float) -> dict:
    """`qa-host ask` in a new process: spawn → answer printed → exit."""
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(env, QA_GUEST=str(guest), QA_MODELS_DIR=str(models_dir), QA_CACHE_DIR=str(cache), QA_LOG="info")
    argv = [str(qa_host), "ask", "--request", str(request)]
    proc = Proc(argv, env, logs / f"{tag}.stderr", timeout)
    out = proc.p.stdout.read()
    code, exit_ms, rss = proc.reap()
    result = {"argv": argv, "exit_code": code, "exit_ms": exit_ms, "peak_rss_mib": rss}
    try:
        body = json.loads(out)
        result["answer"] = {"text": body["Answer"], "start": body["start"], "end": body["end"], "score": body["score"]}
    except (json.JSONDecodeError, KeyError, TypeError):
        result["stdout"] = out[-400:]
    err = proc.stderr_tail(4000)
    for line in err.splitlines():
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "guest ready" in clean and "origin=" in clean:
            m = re.search(r"origin=(\w+)", clean)
            result["guest_origin"] = m.group(1) if m else None
            m = re.search(r"ms=(\d+)", clean)
            result["guest_ready_ms"] = float(m.group(1)) if m else None
    if code != 0 or "answer" not in result:
        result["error"] = failure(proc, f"{tag} failed", code)
    return result


# --- statistics ------------------------------------------------------------------------------


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def p95(xs: list[float]) -> float | None:
    """Nearest rank."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


# --- environment -----------------------------------------------------------------------------


def machine() -> dict:
    info: dict = {"python_driver": platform.python_version(), "kernel": platform.release(), "arch": platform.machine()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        blocks = [b for b in cpuinfo.split("\n\n") if b.strip()]
        fields = [dict(l.split(":", 1) for l in b.splitlines() if ":" in l) for b in blocks]
        fields = [{k.strip(): v.strip() for k, v in f.items()} for f in fields]
        info["cpu_model"] = fields[0].get("model name", "?") if fields else "?"
        info["logical_cpus"] = len(fields)
        cores = {(f.get("physical id"), f.get("core id")) for f in fields}
        info["physical_cores"] = len(cores) if all(c != (None, None) for c in cores) else None
    except OSError:
        pass
    info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        osr = dict(l.split("=", 1) for l in Path("/etc/os-release").read_text().splitlines() if "=" in l)
        info["os"] = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        info["os"] = platform.platform()
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0]
        info["mem_total_mib"] = int(mem.split()[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def python_has(python: str, modules: list[str]) -> str | None:
    """None when `python` imports all modules, else why not."""
    if not python or not (Path(python).exists() or shutil.which(python)):
        return f"no python interpreter at {python}"
    code = f"import {', '.join(modules)}"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{python}: {e}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import {', '.join(modules)} ({last})"
    return None


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_python = HOME_QA / "train-venv/bin/python"
    p.add_argument("--rows", default="1,2,3,4,5", help="rows to run, e.g. 1,4,5 (default all)")
    p.add_argument("--iters", type=int, help="timed passes over all inputs per row (default 20; smoke 2)")
    p.add_argument("--questions", type=int, help="SQuAD questions (default 20; smoke 2)")
    p.add_argument("--long", type=int, help="long inputs (default 3; smoke 1)")
    p.add_argument("--long-chars", type=int, default=4500, help="characters of context per long input (default 4500, ~4 windows)")
    p.add_argument("--cold-runs", type=int, help="measured cold starts per row (default 3; smoke 1), after one discarded")
    p.add_argument("--python", default=str(default_python) if default_python.exists() else sys.executable,
                   help="interpreter for rows 4 and 5 (default ~/.cache/qa/train-venv/bin/python if present)")
    p.add_argument("--hf-dir", default=str(HOME_QA / "train-out/export/hf"), help="PyTorch weights of the same model, for row 4")
    p.add_argument("--model-dir", default="models/nlp1", help="the shipped model (model.onnx, tokenizer.json, config.json)")
    p.add_argument("--qa-host", default="target/release/qa-host")
    p.add_argument("--qa-bench", default="target/release/qa-bench")
    p.add_argument("--guest", default="target/wasm32-wasip2/release/qa-guest.wasm")
    p.add_argument("--squad", default="fixtures/squad-dev-v1.1-sample.json", help="SQuAD v1.1 file the questions come from")
    p.add_argument("--sample", default="fixtures/benz.json", help="the sample request (always the first input)")
    p.add_argument("--out", help="raw results JSON (default bench/results/compare-<UTC timestamp>.json)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per runner process (default 1800)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: --iters 2 --questions 2 --long 1 --cold-runs 1")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a requested row or cold start did not run or failed (for CI; timings are never checked)")
    args = p.parse_args()
    small = {"iters": 2, "questions": 2, "long": 1, "cold_runs": 1}
    full = {"iters": 20, "questions": 20, "long": 3, "cold_runs": 3}
    for key in full:
        if getattr(args, key) is None:
            setattr(args, key, (small if args.smoke else full)[key])
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; rows are 1-5")
    for key in ("model_dir", "qa_host", "qa_bench", "guest", "squad", "sample", "hf_dir"):
        setattr(args, key, (ROOT / getattr(args, key)).resolve() if not Path(getattr(args, key)).is_absolute() else Path(getattr(args, key)))
    return args


def main() -> None:
    args = parse_args()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_path = Path(args.out) if args.out else ROOT / f"bench/results/compare-{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="qa-compare-"))
    logs = work / "logs"
    logs.mkdir()
    load_start = loadavg()

    inputs, notes = build_inputs(args.sample, args.squad, args.questions, args.long, args.long_chars)
    inputs_file = work / "inputs.json"
    inputs_file.write_text(json.dumps(inputs, ensure_ascii=False))
    kinds = {i["id"]: i["kind"] for i in inputs}
    log(f"{len(inputs)} inputs ({sum(k == 'single' for k in kinds.values())} single, "
        f"{sum(k == 'long' for k in kinds.values())} long) in {inputs_file}; logs in {logs}")

    base_env = dict(os.environ)
    for key in ("QA_PRELOAD", "QA_MODELS", "QA_MODELS_FILE", "QA_DEFAULT_MODEL"):
        base_env.pop(key, None)
    if not base_env.get("ORT_DYLIB_PATH"):
        base_env["ORT_DYLIB_PATH"] = str(ROOT / ".cache/onnxruntime/libonnxruntime.so")  # as scripts/env.sh
    ort_lib = Path(base_env["ORT_DYLIB_PATH"])

    # The model as the host sees it: a models directory holding it as nlp1.
    models_root = work / "models"
    models_root.mkdir()
    (models_root / "nlp1").symlink_to(args.model_dir)
    request_file = work / "request.json"
    request_file.write_text(json.dumps({"model_type": "nlp1", "question": inputs[0]["question"], "context": inputs[0]["context"]}))

    # Prerequisites: a row that cannot run says why.
    reasons: dict[str, str | None] = {}
    for key in args.rows:
        why = None
        if key in RUST_ROWS:
            if not args.qa_bench.is_file():
                why = f"no qa-bench binary at {args.qa_bench}"
            elif not ort_lib.is_file():
                why = f"no ONNX Runtime library at {ort_lib} (ORT_DYLIB_PATH; scripts/setup.sh installs it)"
            elif key == "1" and not args.guest.is_file():
                why = f"no guest at {args.guest}"
            elif not (args.model_dir / "model.onnx").is_file():
                why = f"no model.onnx in {args.model_dir}"
        elif key == "4":
            if not (args.hf_dir / "config.json").is_file():
                why = f"no Hugging Face model directory at {args.hf_dir}"
            else:
                why = python_has(args.python, ["torch", "transformers"])
        elif key == "5":
            if not (args.model_dir / "model.onnx").is_file():
                why = f"no model.onnx in {args.model_dir}"
            else:
                why = python_has(args.python, ["onnxruntime", "tokenizers", "numpy"])
        reasons[key] = why
    cold_reason: dict[str, str | None] = {}
    if "1" in args.rows:
        if not args.qa_host.is_file():
            cold_reason["1"] = f"no qa-host binary at {args.qa_host}"
        elif not args.guest.is_file():
            cold_reason["1"] = f"no guest at {args.guest}"
        elif not ort_lib.is_file():
            cold_reason["1"] = f"no ONNX Runtime library at {ort_lib}"
        else:
            cold_reason["1"] = None
    for key in ("4", "5"):
        if key in args.rows:
            cold_reason[key] = reasons[key]

    def runner_argv(key: str, iters: int) -> list[str]:
        name = ROWS[key][0]
        if key in RUST_ROWS:
            return [str(args.qa_bench), "--row", name, "--model-dir", str(args.model_dir), "--inputs", str(inputs_file),
                    "--iters", str(iters), "--guest", str(args.guest)]
        model = args.hf_dir if key == "4" else args.model_dir
        return [args.python, str(ROOT / "bench/rows.py"), "--row", name, "--model-dir", str(model),
                "--inputs", str(inputs_file), "--iters", str(iters)]

    runner_env = dict(base_env, QA_CACHE_DIR=str(work / "qa-cache-warm"))
    results: dict[str, dict] = {key: {"name": ROWS[key][0], "what": ROWS[key][1], "not_run": reasons[key]} for key in args.rows}

    # Warm: one process per row, rows one after another.
    for key in args.rows:
        if reasons[key]:
            log(f"row {key}: not run: {reasons[key]}")
            continue
        log(f"row {key} ({ROWS[key][0]}): warm, {args.iters} timed passes")
        r = run_runner(runner_argv(key, args.iters), runner_env, logs, f"warm-{key}", args.timeout, cold=False)
        results[key]["warm"] = r
        if "error" in r:
            log(f"row {key}: {r['error']}")

    # Cold: new process → first answer, model files in the page cache. One discarded start per
    # configuration, then --cold-runs measured, configurations interleaved.
    cold_configs: list[tuple[str, str]] = []  # (key, variant)
    guest_dirs: dict[str, Path] = {}
    if cold_reason.get("1") is None and "1" in args.rows:
        for variant in ("precompiled", "compiled"):
            d = work / f"guest-{variant}"
            d.mkdir()
            shutil.copy(args.guest, d / "qa-guest.wasm")
            guest_dirs[variant] = d / "qa-guest.wasm"
        cp = subprocess.run([str(args.qa_host), "compile-guest", "--guest", str(guest_dirs["precompiled"])],
                            env=dict(base_env, QA_CACHE_DIR=str(work / "compile-cache")), capture_output=True, text=True,
                            timeout=args.timeout)
        if cp.returncode != 0:
            cold_reason["1"] = f"qa-host compile-guest failed: {cp.stderr.strip()[-300:]}"
        else:
            results["1"]["compile_guest"] = {"artifact": cp.stdout.strip(), "stderr": cp.stderr.strip()[-300:]}
            cold_configs += [("1", "precompiled"), ("1", "compiled")]
    for key in ("4", "5"):
        if key in args.rows and cold_reason.get(key) is None:
            cold_configs.append((key, ""))
    for key, why in cold_reason.items():
        if why:
            results[key]["cold_not_run"] = why
            log(f"row {key}: cold start not run: {why}")

    def cold_once(key: str, variant: str, tag: str) -> dict:
        if key == "1":
            return run_host_cold(args.qa_host, guest_dirs[variant], models_root, request_file, work / f"cache-{tag}",
                                 base_env, logs, tag, args.timeout)
        r = run_runner(runner_argv(key, 0), base_env, logs, tag, args.timeout, cold=True)
        r["ms"] = r.get("first_ms")
        return r

    if cold_configs:
        log(f"cold starts: {len(cold_configs)} configurations × (1 discarded + {args.cold_runs})")
    for rep in range(args.cold_runs + 1):
        for key, variant in cold_configs:
            tag = f"cold-{key}{'-' + variant if variant else ''}-{rep}"
            r = cold_once(key, variant, tag)
            r["discarded"] = rep == 0
            slot = results[key].setdefault("cold" + (f"_{variant}" if variant else ""), [])
            slot.append(r)
            if "error" in r:
                log(f"row {key} cold: {r['error']}")
    load_end = loadavg()

    # --- summary ---
    def warm_stats(key: str) -> dict | None:
        w = results[key].get("warm")
        if not w or "error" in w or "done" not in w:
            return None
        times = w["done"].get("times_ms", {})
        pooled = {"single": [], "long": []}
        for id_, xs in times.items():
            if id_ in kinds:
                pooled[kinds[id_]].extend(float(x) for x in xs)
        missing = [i for i in kinds if i not in times]
        return {"single_median": median(pooled["single"]), "single_p95": p95(pooled["single"]),
                "long_median": median(pooled["long"]), "long_p95": p95(pooled["long"]),
                "single_n": len(pooled["single"]), "long_n": len(pooled["long"]),
                "benz_median": median([float(x) for x in times.get("benz", [])]), "missing_inputs": missing,
                "peak_rss_mib": w["peak_rss_mib"]}

    def cold_stats(key: str, variant: str = "") -> dict | None:
        runs = results.get(key, {}).get("cold" + (f"_{variant}" if variant else ""))
        if not runs:
            return None
        measured = [r for r in runs if not r["discarded"]]
        errors = [r["error"] for r in measured if "error" in r]
        ok = [r for r in measured if "error" not in r]
        ms = [r["exit_ms"] if key == "1" else r["first_ms"] for r in ok]
        return {"median_ms": median(ms), "runs_ms": ms, "peak_rss_mib": max((r["peak_rss_mib"] for r in ok), default=None),
                "errors": errors, "guest_origins": [r.get("guest_origin") for r in ok] if key == "1" else None}

    summary = {key: {"warm": warm_stats(key)} for key in args.rows}
    if "1" in args.rows:
        summary["1"]["cold"] = cold_stats("1", "precompiled")
        summary["1"]["cold_compiled"] = cold_stats("1", "compiled")
    for key in ("4", "5"):
        if key in args.rows:
            summary[key]["cold"] = cold_stats(key)
    floor = summary.get("3", {}).get("warm")

    # --- table ---
    lines: list[str] = []
    model_bytes = (args.model_dir / "model.onnx").stat().st_size if (args.model_dir / "model.onnx").exists() else None
    n_single = sum(k == "single" for k in kinds.values())
    n_long = len(kinds) - n_single
    lines.append(f"Same model ({args.model_dir.name}, int8 model.onnx {model_bytes / 1e6:.1f} MB; row 4: the fp32 PyTorch weights it was "
                 f"quantized from), same {len(inputs)} inputs ({n_single} single question{'s' if n_single != 1 else ''}, {n_long} long context{'s' if n_long != 1 else ''}), "
                 f"{args.iters} timed passes each after one untimed; cold: median of {args.cold_runs} "
                 "(after one discarded start). Times in ms, RSS in MiB.")
    lines.append("")
    lines.append("| row | what | warm single median / p95 | warm long median / p95 | × row 3 (single / long) | cold start median | peak RSS warm / cold |")
    lines.append("|---|---|---|---|---|---|---|")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}×" if a is not None and b else "–"

    def cold_cells(key: str, stats: dict | None, expect_origin: str | None) -> tuple[str, str]:
        if key in ("2", "3"):
            return "–", "–"
        if stats is None:
            return f"not run: {results[key].get('cold_not_run') or results[key]['not_run'] or '?'}", "–"
        if stats["median_ms"] is None:
            return f"failed: {stats['errors'][0] if stats['errors'] else '?'}", "–"
        cell = fmt(stats["median_ms"])
        if expect_origin:
            origins = stats.get("guest_origins") or []
            if any(o != expect_origin for o in origins):
                cell += f" (guest origin {'/'.join(str(o) for o in origins)}, expected {expect_origin}!)"
        if stats["errors"]:
            cell += f" ({len(stats['errors'])} failed)"
        return cell, fmt(stats["peak_rss_mib"])

    def row_line(key: str) -> str:
        name, what = ROWS[key]
        cold_s, rss_cold = cold_cells(key, summary[key].get("cold"), "Shipped" if key == "1" else None)
        if key == "1" and summary[key].get("cold"):
            cold_s += " (precompiled guest)"
        w = summary[key]["warm"]
        if w is None:
            why = results[key]["not_run"] or results[key].get("warm", {}).get("error", "no result")
            return f"| {key} {name} | {what} | not run: {why} | | | {cold_s} | – / {rss_cold} |"
        single = f"{fmt(w['single_median'])} / {fmt(w['single_p95'])}"
        long_ = f"{fmt(w['long_median'])} / {fmt(w['long_p95'])}" if w["long_n"] else "–"
        vs = (f"{ratio(w['single_median'], floor['single_median'])} / {ratio(w['long_median'], floor['long_median'])}"
              if floor else "– (row 3 not run)")
        if w["missing_inputs"]:
            vs += f" ({len(w['missing_inputs'])} inputs missing!)"
        return f"| {key} {name} | {what} | {single} | {long_} | {vs} | {cold_s} | {fmt(w['peak_rss_mib'])} / {rss_cold} |"

    for key in args.rows:
        lines.append(row_line(key))
        if key == "1" and summary["1"].get("cold_compiled"):
            cold_s, rss_cold = cold_cells("1", summary["1"]["cold_compiled"], "Compiled")
            lines.append(f"| 1 project | … cold start without the precompiled guest (compiled at start, empty cache) | | | | {cold_s} | – / {rss_cold} |")

    # --- targets ---
    lines.append("")
    lines.append("Targets:")

    def w(key: str, col: str) -> float | None:
        s = summary.get(key, {}).get("warm")
        return s and s.get(col)

    def c(key: str) -> float | None:
        s = summary.get(key, {}).get("cold")
        return s and s.get("median_ms")

    def target(label: str, value: float | None, ok: bool | None, detail: str, missing: str) -> None:
        if value is None or ok is None:
            lines.append(f"- {label}: not evaluated ({missing})")
        else:
            lines.append(f"- {label}: {detail} → **{'PASS' if ok else 'FAIL'}**")

    a, b = w("1", "single_median"), w("3", "single_median")
    target("warm, single questions: row 1 ≤ 1.15 × row 3", a and b and a / b, a is not None and b is not None and a / b <= 1.15,
           f"row 1 {fmt(a)} ms / row 3 {fmt(b)} ms = {ratio(a, b)}", "needs rows 1 and 3")
    for col, label in (("single_median", "single questions"), ("long_median", "long contexts")):
        a, b = w("1", col), w("4", col)
        target(f"warm, {label}: row 1 ≥ 3× faster than row 4", a and b and b / a, a is not None and b is not None and b / a >= 3,
               f"row 4 {fmt(b)} ms / row 1 {fmt(a)} ms = {ratio(b, a)}", "needs rows 1 and 4")
        a, b = w("1", col), w("5", col)
        target(f"warm, {label}: row 1 faster than row 5", a and b and b / a, a is not None and b is not None and a < b,
               f"row 5 {fmt(b)} ms / row 1 {fmt(a)} ms = {ratio(b, a)}", "needs rows 1 and 5")
    a, b = c("1"), c("5")
    target("cold (precompiled guest): row 1 ≤ 0.7 × row 5", a and b and a / b, a is not None and b is not None and a / b <= 0.7,
           f"row 1 {fmt(a)} ms / row 5 {fmt(b)} ms = {ratio(a, b)}", "needs cold starts of rows 1 and 5")
    a, b = c("1"), c("4")
    target("cold (precompiled guest): row 1 ≥ 20× faster than row 4", a and b and b / a, a is not None and b is not None and b / a >= 20,
           f"row 4 {fmt(b)} ms / row 1 {fmt(a)} ms = {ratio(b, a)}", "needs cold starts of rows 1 and 4")
    if model_bytes is not None:
        limit_mib = (model_bytes + 150e6) / 2**20
        compiled = (summary.get("1", {}).get("cold_compiled") or {}).get("peak_rss_mib")
        cold_rss = (summary.get("1", {}).get("cold") or {}).get("peak_rss_mib")
        target(f"peak RSS of row 1, new process to its first answer (precompiled guest) < model.onnx ({model_bytes / 1e6:.1f} MB) + 150 MB = {limit_mib:.0f} MiB",
               cold_rss, cold_rss is not None and cold_rss < limit_mib,
               f"{fmt(cold_rss)} MiB" + (f" (compiling the guest at start instead: {fmt(compiled)} MiB)" if compiled is not None else ""),
               "row 1 cold start not run")
        warm_rss = w("1", "peak_rss_mib")
        target(f"peak RSS of row 1 over the whole warm run, long contexts included < {limit_mib:.0f} MiB",
               warm_rss, warm_rss is not None and warm_rss < limit_mib, f"{fmt(warm_rss)} MiB", "row 1 not run")

    # --- answers ---
    def answers_of(key: str) -> dict | None:
        wr = results.get(key, {}).get("warm") or {}
        ans = (wr.get("done") or {}).get("answers")
        return ans or None

    lines.append("")
    lines.append("Answers (same text / same character span, over the inputs both rows answered):")
    disagreements: list[str] = []
    for ref in ("1", "4"):
        ref_ans = answers_of(ref)
        if ref_ans is None:
            lines.append(f"- vs row {ref}: row {ref} has no answers (not run)")
            continue
        parts = []
        for key in args.rows:
            if key == ref:
                continue
            ans = answers_of(key)
            if ans is None:
                continue
            common = [i for i in kinds if i in ans and i in ref_ans and isinstance(ans[i], dict) and isinstance(ref_ans[i], dict)]
            same_text = [i for i in common if ans[i].get("text") == ref_ans[i].get("text")]
            same_span = [i for i in same_text if (ans[i].get("start"), ans[i].get("end")) == (ref_ans[i].get("start"), ref_ans[i].get("end"))]
            parts.append(f"row {key} {len(same_text)}/{len(common)} text, {len(same_span)}/{len(common)} span")
            for i in common:
                if i not in same_text and (ref == "1" or key != "1"):
                    disagreements.append(f"{i}: row {ref} {ref_ans[i].get('text')!r} vs row {key} {ans[i].get('text')!r}")
        lines.append(f"- vs row {ref}: " + ("; ".join(parts) if parts else "no other row answered"))
    cold_first = []
    for key, slot in (("1", "cold_precompiled"), ("1", "cold_compiled"), ("4", "cold"), ("5", "cold")):
        for r in results.get(key, {}).get(slot, []):
            a = r.get("answer") or (r.get("first") or {}).get("answer")
            if a:
                cold_first.append(f"row {key}{' ' + slot[5:] if slot != 'cold' else ''} {a.get('text')!r}")
    if cold_first:
        lines.append(f"- cold starts answered the sample with: {', '.join(sorted(set(cold_first)))}")
    for d in disagreements[:6]:
        lines.append(f"  - differs: {d}")
    if len(disagreements) > 6:
        lines.append(f"  - … {len(disagreements) - 6} more in the raw results")

    # --- machine, command, notes ---
    m = machine()
    lines.append("")
    lines.append(f"Machine: {m.get('cpu_model', '?')}, {m.get('logical_cpus', '?')} logical CPUs"
                 f"{', ' + str(m['physical_cores']) + ' physical cores' if m.get('physical_cores') else ''}"
                 f" ({m.get('cpus_usable')} usable), {m.get('mem_total_mib', '?')} MiB RAM; {m.get('os', '?')}, "
                 f"Linux {m.get('kernel')} {m.get('arch')}; load average {load_start} at start, {load_end} at end.")
    threads = []
    for key in args.rows:
        info = ((results[key].get("warm") or {}).get("done") or {}).get("info") or {}
        if info.get("runtime") or info.get("threads") is not None:
            t = info.get("torch_threads") or info.get("threads") or (info.get("ort_session_options") or {}).get("intra_op_num_threads")
            threads.append(f"row {key}: {info.get('runtime', '?')}, threads {t}"
                           + (" (0 = ORT default: one per physical core)" if t == 0 else ""))
    if threads:
        lines.append("Runtimes: " + "; ".join(threads) + ".")
    lines.append(f"Command: `{command}`")
    if "1" in args.rows and "/debug/" in str(args.qa_host):
        notes.append(f"{args.qa_host} is a debug build: its cold starts are not representative")
    if "1" in args.rows and "/debug/" in str(args.qa_bench):
        notes.append(f"{args.qa_bench} is a debug build: its timings are not representative")
    for n in notes:
        lines.append(f"Note: {n}")
    lines.append(f"Raw results: {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    text = "\n".join(lines)
    print(text, flush=True)

    raw = {
        "command": command, "utc": stamp, "git": git_rev(), "machine": m, "loadavg": {"start": load_start, "end": load_end},
        "settings": dict(SETTINGS, iters=args.iters, questions=args.questions, long=args.long, long_chars=args.long_chars,
                         cold_runs=args.cold_runs, cold_discarded=1, rows=args.rows),
        "paths": {"model_dir": str(args.model_dir), "hf_dir": str(args.hf_dir), "qa_host": str(args.qa_host),
                  "qa_bench": str(args.qa_bench), "guest": str(args.guest), "python": args.python, "ort_dylib": str(ort_lib)},
        "files": {"model.onnx": {"bytes": model_bytes, "sha256": sha256(args.model_dir / "model.onnx")},
                  "guest": {"bytes": args.guest.stat().st_size if args.guest.exists() else None, "sha256": sha256(args.guest)},
                  "ort_dylib_sha256": sha256(ort_lib)},
        "env": {k: v for k, v in os.environ.items() if k.startswith(("QA_", "ORT_", "OMP_", "MKL_", "RAYON_"))},
        "notes": notes, "inputs": inputs, "rows": results, "summary": summary, "table": text,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(raw, indent=1, ensure_ascii=False))
    shutil.rmtree(work, ignore_errors=True)
    if args.strict:
        failures = [f"row {k}: not run: {r['not_run']}" for k, r in results.items() if r.get("not_run")]
        failures += [f"row {k}: {r['warm']['error']}" for k, r in results.items() if "error" in r.get("warm", {})]
        failures += [f"row {k}: cold start not run: {r['cold_not_run']}" for k, r in results.items() if r.get("cold_not_run")]
        for k, s in summary.items():
            for variant in ("cold", "cold_compiled"):
                failures += [f"row {k} {variant}: {e}" for e in (s.get(variant) or {}).get("errors") or []]
            missing = (s.get("warm") or {}).get("missing_inputs")
            if missing:
                failures.append(f"row {k}: no answer for {missing}")
        if failures:
            print("compare: --strict: " + "; ".join(failures), file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
