"""Cold start with the model's graph optimized at load (the repository's model.onnx) against
the same model optimized once by `qa-host optimize-model` (what the packages ship), side by
side.

Each run is a new `qa-host ask` of the sample (fixtures/benz.json) with the guest precompiled
(the compile cache warmed by one discarded run per side); runs alternate between the two model
directories. Printed per side: the median of the process's wall time to the answer, and of the
host's "model loaded" (the model check and the first session's build, from its log), with the
ratio optimized / original, and whether the answers are identical.

    source scripts/env.sh && python3 bench/optimized_cold_start.py --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADED = re.compile(r"model loaded.*?\bms=(\d+)")


def ask(qa_host: str, models: Path, cache: Path) -> tuple[float, int, list]:
    env = dict(os.environ, QA_MODELS_DIR=str(models), QA_CACHE_DIR=str(cache), QA_LOG="info", QA_LOG_FORMAT="text")
    started = time.perf_counter()
    done = subprocess.run([qa_host, "ask", "--request", str(ROOT / "fixtures/benz.json")], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    loaded = LOADED.search(done.stderr)
    if not loaded:
        raise SystemExit(f"no 'model loaded' line in the host's log:\n{done.stderr}")
    return wall * 1000, int(loaded.group(1)), json.loads(done.stdout)["answers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--qa-host", default=os.environ.get("QA_HOST_BIN", str(ROOT / "target/debug/qa-host")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        sides = {"optimized at load": work / "original", "optimized when packaged": work / "optimized"}
        for models in sides.values():
            (models / "nlp1").mkdir(parents=True)
            for name in ("model.onnx", "tokenizer.json", "config.json"):
                shutil.copy(ROOT / "models/nlp1" / name, models / "nlp1" / name)
        subprocess.run([args.qa_host, "optimize-model", str(sides["optimized when packaged"] / "nlp1")], check=True, capture_output=True)
        cache = work / "cache"
        results = {side: [] for side in sides}
        answers = {}
        for side, models in sides.items():
            answers[side] = ask(args.qa_host, models, cache)[2]  # discarded: compiles the guest into the cache
        for _ in range(args.runs):
            for side, models in sides.items():
                wall, loaded, got = ask(args.qa_host, models, cache)
                results[side].append((wall, loaded))
                if got != answers[side]:
                    raise SystemExit(f"{side}: the answers changed between runs")
        base = {k: statistics.median(v[k] for v in results["optimized at load"]) for k in (0, 1)}
        print(f"cold `qa-host ask` of the sample, {args.runs} runs a side, alternated; medians ({args.qa_host})")
        print("| model graph | process to answer (ms) | model loaded (ms) | × at load |")
        print("|---|---|---|---|")
        for side, runs in results.items():
            wall, loaded = (statistics.median(r[k] for r in runs) for k in (0, 1))
            print(f"| {side} | {wall:.0f} | {loaded:.0f} | {wall / base[0]:.2f} / {loaded / base[1]:.2f} |")
        print("identical answers and scores:", answers["optimized at load"] == answers["optimized when packaged"])


if __name__ == "__main__":
    main()
