"""Score model variants side by side through the real host: `qa-host eval` on each, one table.

    python3 tools/train-qa/eval_variants.py --host target/release/qa-host --squad dev-v1.1.json \
        DIR [DIR ...] [--limit N] [--rounds 1]

Each DIR is a model directory (model.onnx, tokenizer.json, config.json); it is served under
its directory name. With --rounds R the variants run R times in turn (A B C A B C ...), so a
slow spell of the machine falls on all of them; the table gives the median of each variant's
per-round median latencies and of its whole-set times, and the EM/F1 of the first round (the
same every round: inference is deterministic). Prints a Markdown table, and the raw results
as JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path


def evaluate(host: Path, squad: Path, name: str, directory: Path, limit: int | None) -> dict:
    env = dict(os.environ, QA_MODELS=f"{name}=image:{directory}")
    cmd = [str(host), "eval", "--model", name, str(squad)] + (["--limit", str(limit)] if limit else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True, type=Path)
    p.add_argument("--squad", required=True, type=Path)
    p.add_argument("--limit", type=int)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("dirs", nargs="+", type=Path)
    args = p.parse_args()
    names = [d.name for d in args.dirs]
    if len(set(names)) != len(names):
        raise SystemExit("two variant directories share a name; give each its own")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name, d in zip(names, args.dirs):
            result = evaluate(args.host, args.squad, name, d, args.limit)
            runs[name].append(result)
            print(f"round {r + 1} {name}: EM {result['exact_match']:.2f} F1 {result['f1']:.2f} "
                  f"median {result['median_ms']:.1f} ms, {result['seconds']:.0f} s", flush=True)
    print("\n| variant | `model.onnx` | exact match | F1 | median latency | whole set |")
    print("|---|---|---|---|---|---|")
    for name, d in zip(names, args.dirs):
        first = runs[name][0]
        size = (d / "model.onnx").stat().st_size / 1e6
        median = statistics.median(x["median_ms"] for x in runs[name])
        whole = statistics.median(x["seconds"] for x in runs[name])
        print(f"| {name} | {size:.1f} MB | {first['exact_match']:.2f} | {first['f1']:.2f} | {median:.1f} ms | {whole:.0f} s |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
