"""What a million questions cost on AWS Lambda: this project against the original sample's
stack (the transformers pipeline on PyTorch, see bench/cost_sample_stack.py), from figures
measured here:

- on one core (`taskset -c 0`: what Lambda gives at 1,769 MB), one inference thread each: warm
  latency over one ~1.4 KB document (SQuAD dev paragraphs and the sample's), each of 8
  questions asked alone, and the 8 in one call (this project: one request with `questions`;
  the pipeline: its list-of-questions call); peak RSS, which picks the smallest memory setting
  that fits (RSS + 64 MB, rounded up to 64 MB, at least 128 MB); cold start, process start to
  the first answer (this project: `qa-host serve` with the model preloaded and the guest
  snapshot already compiled, as a deployment ships it);
- this project again at each memory size of --memory (and the smallest that fits), under a
  cgroup CPU quota of that size's share of a vCPU (bench/cpu_share.py's `Quota`; 1,769 MB is
  one vCPU), with the settings the host derives from the quota: those rows' durations are
  measured, not scaled. Needs a writable cgroup (root); --no-quota skips them.

Cost per million questions = requests + GB-seconds. Rows measured on one core scale duration
by 1,769 / memory below 1,769 MB (Lambda gives a proportional share of a core; GB-seconds then
come out the same as at 1,769 MB); the quota rows need no such assumption. Warm, and with
every request cold (init billed at the same rate). Prices: the PRICES table below, dated.

    source scripts/env.sh && cargo build --release -p qa-host
    python3 bench/cost.py
    python3 bench/cost.py --qa-host target/debug/qa-host --no-sample-stack   # this project only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import long_docs  # noqa: E402
from common import serve  # noqa: E402
import many_questions  # noqa: E402
from cpu_share import VCPU_MB, Quota  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# us-east-1, first tier, per GB-second of duration and per request, as published on the AWS
# Lambda pricing page; the values as quoted by a pricing summary dated 2026-05-11 (read in
# this project's session of 2026-11-30; aws.amazon.com itself is not reachable from here).
PRICES = {"date": "2026-05-11", "x86_64": 0.0000166667, "arm64": 0.0000133334, "request": 0.20 / 1e6}


def memory_setting(peak_rss_mib: float) -> int:
    return max(128, math.ceil((peak_rss_mib + 64) / 64) * 64)


def cost_per_million(latency_ms: float, cold_s: float, memory_mb: int, questions_per_request: int, arch: str, cold: bool,
                     scaled: bool = True) -> float:
    """`scaled`: the times were measured on a whole core and are stretched to the memory's share."""
    share = max(1.0, VCPU_MB / memory_mb) if scaled else 1.0
    seconds = latency_ms / 1e3 * share + (cold_s * share if cold else 0.0)
    requests = 1e6 / questions_per_request
    return requests * (memory_mb / 1024 * seconds * PRICES[arch] + PRICES["request"])


def project(host: Path, inputs: dict, runs: int, memory_mb: int | None = None) -> dict:
    """This project's figures on one core with one thread or, with `memory_mb`, under that
    function size's CPU quota with the settings the host derives from it."""
    env = dict(os.environ, QA_PRELOAD="nlp1", QA_MODELS_DIR=str(ROOT / "models"), QA_LOG="warn")
    command = [str(host), "serve", "--addr", "127.0.0.1:0"]
    quota = None
    if memory_mb is None:
        command = ["taskset", "-c", "0", *command]
        env["QA_INFERENCE_THREADS"] = "1"
    else:
        quota = Quota(min(memory_mb / VCPU_MB, os.cpu_count() or 1))
        command = quota.wrap(command)
    started = time.monotonic()
    proc, base = serve(command, env)
    try:
        status, _, _ = long_docs.ask(base, {"question": inputs["question"], "context": inputs["context"]})
        cold = time.monotonic() - started
        assert status == 200
        alone = [{"question": q, "context": inputs["batch_context"]} for q in inputs["questions"]]
        warm = [long_docs.ask(base, alone[i % len(alone)])[2] for i in range(runs)]
        batch = {"questions": inputs["questions"], "context": inputs["batch_context"]}
        long_docs.ask(base, batch)
        batch8 = [long_docs.ask(base, batch)[2] for _ in range(max(3, runs // 3))]
        rss = long_docs.peak_rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        if quota:
            quota.__exit__()
    runtime = "qa-host, ONNX Runtime 1 thread on one core" if memory_mb is None else f"qa-host under a {memory_mb} MB function's CPU quota"
    return {"cold_s": cold, "single_ms": statistics.median(warm), "batch8_ms": statistics.median(batch8), "peak_rss_mib": rss,
            "runtime": runtime}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--qa-host", type=Path, default=ROOT / "target/release/qa-host")
    p.add_argument("--python", default=str(Path.home() / ".cache/qa/train-venv/bin/python"), help="an interpreter with torch and transformers")
    p.add_argument("--squad", type=Path, default=long_docs.DEV)
    p.add_argument("--memory", default="512,1024,1769", help="function sizes (MB) this project is measured at under a CPU quota, besides the smallest that fits")
    p.add_argument("--no-quota", action="store_true", help="no quota rows (no writable cgroup)")
    p.add_argument("--no-sample-stack", action="store_true", help="this project only (no interpreter with torch here)")
    args = p.parse_args()
    benz = json.loads((ROOT / "fixtures/benz.json").read_text())
    batch_context, questions = many_questions.document_and_questions(args.squad, benz, 2000)
    inputs = {"question": benz["question"], "context": benz["context"], "questions": questions, "batch_context": batch_context}
    rows = {"this project": project(args.qa_host, inputs, args.runs)}
    if not args.no_sample_stack:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(inputs, f)
            f.flush()
            out = subprocess.run(["taskset", "-c", "0", args.python, str(ROOT / "bench/cost_sample_stack.py"),
                                  "--tokenizer", str(ROOT / "models/nlp1/tokenizer.json"), "--inputs", f.name, "--runs", str(args.runs)],
                                 capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if out.returncode != 0:
                sys.exit(f"the sample's stack failed (--no-sample-stack leaves it out):\n{out.stderr[-3000:]}")
            rows["sample stack (transformers pipeline, PyTorch, DistilBERT-base)"] = json.loads(out.stdout.strip().splitlines()[-1])
    fits = memory_setting(rows["this project"]["peak_rss_mib"])
    quota_rows = {}
    if not args.no_quota:
        for memory in sorted({fits, *(int(m) for m in args.memory.split(","))}):
            quota_rows[memory] = project(args.qa_host, inputs, args.runs, memory)
            print(f"{memory} MB under its quota: single {quota_rows[memory]['single_ms']:.1f} ms", file=sys.stderr)

    print("Measured on one core (`taskset -c 0`), one inference thread:\n")
    print("| stack | warm, a question alone (ms) | warm, 8 questions in one call (ms per question) | cold start to first answer (s) | peak RSS (MiB) | smallest memory that fits (MB) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['single_ms']:.1f} | {r['batch8_ms'] / 8:.1f} | {r['cold_s']:.2f} | {r['peak_rss_mib']:.0f} | {memory_setting(r['peak_rss_mib'])} |")
    if quota_rows:
        print("\nThis project under each function size's CPU quota (the share of a vCPU, the settings the host derives from it):\n")
        print("| memory (MB) | vCPU share | warm, a question alone (ms) | warm, 8 in one call (ms per question) | cold start (s) | × on one core, alone |")
        print("|---|---|---|---|---|---|")
        one_core = rows["this project"]["single_ms"]
        for memory, r in quota_rows.items():
            print(f"| {memory:,} | {memory / VCPU_MB:.2f} | {r['single_ms']:.1f} | {r['batch8_ms'] / 8:.1f} | {r['cold_s']:.2f} | {r['single_ms'] / one_core:.2f} |")
    print(f"\nCost per million questions, USD (prices of {PRICES['date']}: x86_64 ${PRICES['x86_64']}/GB-s, arm64 ${PRICES['arm64']}/GB-s, "
          f"${PRICES['request'] * 1e6:.2f} per million requests; arm64 figures assume the same duration as measured on x86-64):\n")
    print("| stack | duration | questions per request | memory (MB) | x86_64 warm | arm64 warm | x86_64 every request cold | arm64 every request cold |")
    print("|---|---|---|---|---|---|---|---|")
    priced = [(name, "one core, scaled to the share", memory_setting(r["peak_rss_mib"]), r, True) for name, r in rows.items()]
    priced += [("this project", "measured under the quota", memory, r, False) for memory, r in quota_rows.items()]
    for name, how, memory, r, scaled in priced:
        for per_request, latency in ((1, r["single_ms"]), (8, r["batch8_ms"])):
            costs = [cost_per_million(latency, r["cold_s"], memory, per_request, arch, cold, scaled) for cold in (False, True) for arch in ("x86_64", "arm64")]
            print(f"| {name} | {how} | {per_request} | {memory:,} | " + " | ".join(f"{c:,.2f}" for c in costs) + " |")
    print("\nruntimes: " + "; ".join(f"{n}: {r['runtime']}" for n, r in rows.items()))
    print(f"command: {' '.join(sys.argv)}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
