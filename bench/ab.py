"""Two builds of this project side by side, warm, in one run: row 1 of compare.py (a request in,
the answer out, through the host and the wasm guest) for build A and build B, alternated round
by round on the same inputs, so machine drift hits both alike. Prints medians per input kind,
the ratio B / A, and the number of samples.

    python3 bench/ab.py --a-bench ~/baseline/qa-bench --a-guest ~/baseline/qa-guest.wasm \\
        --b-bench target/release/qa-bench --b-guest target/wasm32-wasip2/release/qa-guest.wasm

Each round starts a fresh process per build (its own model load and warm-up, untimed) and
times --iters passes over the inputs. Only the standard library; inputs as compare.py builds
them (the sample question, --questions SQuAD questions, --long long contexts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, build_inputs, loadavg  # noqa: E402


def run(bench: Path, guest: Path, model_dir: Path, inputs: Path, iters: int, cache: Path, extra: list[str]) -> dict[str, list[float]]:
    env = dict(os.environ, QA_CACHE_DIR=str(cache), **dict(kv.split("=", 1) for kv in extra))
    argv = [str(bench), "--row", "project", "--model-dir", str(model_dir), "--inputs", str(inputs), "--iters", str(iters),
            "--guest", str(guest)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    done = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{") and '"done"' in line]
    if out.returncode != 0 or not done:
        sys.exit(f"{bench} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return done[0]["times_ms"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for side in ("a", "b"):
        p.add_argument(f"--{side}-bench", type=Path, required=True, help=f"build {side.upper()}'s qa-bench")
        p.add_argument(f"--{side}-guest", type=Path, required=True, help=f"build {side.upper()}'s guest .wasm")
        p.add_argument(f"--{side}-env", action="append", default=[], metavar="KEY=VALUE",
                       help=f"an environment variable for build {side.upper()} only (repeatable), to compare settings")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models/nlp1")
    p.add_argument("--squad", type=Path, default=ROOT / "fixtures/squad-dev-v1.1-sample.json")
    p.add_argument("--questions", type=int, default=20)
    p.add_argument("--long", type=int, default=3)
    p.add_argument("--long-chars", type=int, default=4500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10, help="timed passes per round and build")
    args = p.parse_args()

    inputs, notes = build_inputs(ROOT / "fixtures/benz.json", args.squad, args.questions, args.long, args.long_chars)
    kinds = {item["id"]: item["kind"] for item in inputs}
    samples: dict[str, dict[str, list[float]]] = {"a": {"single": [], "long": []}, "b": {"single": [], "long": []}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        file = tmp / "inputs.json"
        file.write_text(json.dumps([{k: v for k, v in i.items() if k != "gold"} for i in inputs]))
        before = loadavg()
        for round_ in range(args.rounds):
            order = ("a", "b") if round_ % 2 == 0 else ("b", "a")
            for side in order:
                bench, guest, extra = getattr(args, f"{side}_bench"), getattr(args, f"{side}_guest"), getattr(args, f"{side}_env")
                times = run(bench, guest, args.model_dir, file, args.iters, tmp / f"cache-{side}", extra)
                for input_id, ms in times.items():
                    samples[side][kinds[input_id]].extend(ms)
            print(f"[ab] round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        after = loadavg()

    print("| input kind | A median ms | B median ms | B / A | samples each |")
    print("|---|---|---|---|---|")
    for kind in ("single", "long"):
        a, b = samples["a"][kind], samples["b"][kind]
        if a and b:
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {kind} | {ma:.2f} | {mb:.2f} | {mb / ma:.3f} | {len(a)} |")
    print(f"\nA: {args.a_bench} + {args.a_guest} {' '.join(args.a_env)}\nB: {args.b_bench} + {args.b_guest} {' '.join(args.b_env)}")
    print(f"load average before: {before}; after: {after}; notes: {'; '.join(notes) or 'none'}")
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
