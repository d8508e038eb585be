"""Guest start-up cost: compiling the component with Cranelift versus loading a precompiled
artifact (the compile cache, or the artifact `qa-host compile-guest` ships beside the wasm).
Reads the "guest ready" log line of `qa-host ask`, which times engine creation plus
obtaining the component plus the first instantiation. Prints a markdown table of medians.

    source scripts/env.sh && python3 bench/guest_load.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "target/debug/qa-host"


def ready_ms(guest: Path, cache: Path) -> tuple[str, float]:
    env = dict(os.environ, QA_GUEST=str(guest), QA_CACHE_DIR=str(cache), QA_LOG="info")
    out = subprocess.run([str(HOST), "ask", "--request", str(ROOT / "fixtures/benz.json")], env=env,
                         capture_output=True, text=True, check=True)
    line = next(l for l in out.stderr.splitlines() if "guest ready" in l)
    clean = re.sub(r"\x1b\[[0-9;]*m", "", line)
    origin = re.search(r"origin=(\w+)", clean).group(1)
    return origin, float(re.search(r"ms=(\d+)", clean).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp())
    try:
        plain = work / "plain/qa-guest.wasm"
        shipped = work / "shipped/qa-guest.wasm"
        for target in (plain, shipped):
            target.parent.mkdir(parents=True)
            shutil.copy(os.environ.get("QA_GUEST", ROOT / "target/wasm32-wasip2/release/qa-guest.wasm"), target)
        subprocess.run([str(HOST), "compile-guest", "--guest", str(shipped)], check=True, capture_output=True)
        rows: dict[str, list[float]] = {"Compiled": [], "Cached": [], "Shipped": []}
        for i in range(args.runs):
            cache = work / f"cache{i}"
            for guest in (plain, plain, shipped):  # cold compile, then the cache, then the shipped artifact
                origin, ms = ready_ms(guest, cache if guest == plain else work / f"empty{i}")
                rows[origin].append(ms)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = (ROOT / "target/wasm32-wasip2/release/qa-guest.wasm").stat().st_size / 2**20
    print(f"guest component: {size:.1f} MiB; medians of {args.runs} runs\n")
    print("| guest obtained by | start-up to first instance (ms) |")
    print("|---|---|")
    labels = {"Compiled": "compiling (Cranelift)", "Cached": "compile cache (/tmp)", "Shipped": "artifact shipped beside the wasm"}
    for origin, values in rows.items():
        print(f"| {labels[origin]} | {statistics.median(values):.0f} |")


if __name__ == "__main__":
    main()
