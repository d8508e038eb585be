"""What a candidate guest costs a request under Lambda, where a shadow call runs before the
response (bounded by QA_GUEST_SHADOW_MAX_DELAY_MS) because nothing runs between invocations.

Each mode starts cargo-lambda's Runtime API emulator and a fresh `qa-host` bootstrap with the
shipped model preloaded, sends --warmup requests, then times --requests Invoke API round trips
of the sample question. Modes: no candidate; a canary at 0% (the routing and bookkeeping
only); a shadow on every request whose candidate is a copy of the serving guest (the worst
case: the guest work doubles); the same shadow bounded at 50 ms. Prints a markdown table of
medians and 90th percentiles, and each median's ratio to "no candidate", all from one run.

    source scripts/env.sh && python3 bench/rollout.py --requests 40
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import free_port, invoke, wait_port
from lambda_init import ROOT


def run_mode(cargo_lambda: str, host: Path, guest: Path, extra: dict[str, str], warmup: int, requests: int) -> list[float]:
    port = free_port()
    emulator = subprocess.Popen([cargo_lambda, "lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", str(port)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bootstrap = None
    try:
        wait_port(port)
        env = {**os.environ, "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{port}/.rt", "AWS_LAMBDA_FUNCTION_NAME": "_",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048", "AWS_LAMBDA_FUNCTION_VERSION": "1", "QA_LOG": "warn",
               "QA_GUEST": str(guest), "QA_MODELS_DIR": str(ROOT / "models"), "QA_PRELOAD": "nlp1",
               "QA_CACHE_DIR": str(ROOT / "target/qa-cache-bench"), "POWERTOOLS_METRICS_DISABLED": "true", **extra}
        bootstrap = subprocess.Popen([str(host)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        event = json.loads((ROOT / "fixtures/benz.json").read_text())
        for _ in range(warmup):
            invoke(port, event, "1886")
        return [invoke(port, event, "1886") for _ in range(requests)]
    finally:
        if bootstrap:
            bootstrap.kill()
            bootstrap.wait()
        emulator.kill()
        emulator.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--host", type=Path, default=ROOT / "target/release/qa-host")
    p.add_argument("--guest", type=Path, default=ROOT / "target/wasm32-wasip2/release/qa-guest.wasm")
    p.add_argument("--cargo-lambda", default=str(ROOT / ".cache/tools-venv/bin/cargo-lambda"))
    args = p.parse_args()
    if not args.host.is_file():
        raise SystemExit(f"{args.host} is missing: cargo build --release -p qa-host (or pass --host)")
    with tempfile.TemporaryDirectory() as tmp:
        # A copy, so the candidate is another file than the serving guest (same bytes, same work).
        candidate = Path(tmp) / "candidate.wasm"
        shutil.copy(args.guest, candidate)
        modes = [
            ("no candidate", {}),
            ("canary 0% (routing and bookkeeping only)", {"QA_GUEST_CANARY": str(candidate), "QA_GUEST_CANARY_PERCENT": "0"}),
            ("shadow 100%, the same guest", {"QA_GUEST_SHADOW": str(candidate)}),
            ("shadow 100%, bounded at 50 ms", {"QA_GUEST_SHADOW": str(candidate), "QA_GUEST_SHADOW_MAX_DELAY_MS": "50"}),
        ]
        results = [(name, run_mode(args.cargo_lambda, args.host, args.guest, extra, args.warmup, args.requests)) for name, extra in modes]
    base = statistics.median(results[0][1])
    print(f"{args.requests} requests a mode after {args.warmup} warm-up ones; host {args.host.relative_to(ROOT) if args.host.is_relative_to(ROOT) else args.host}")
    print()
    print("| mode | median (ms) | p90 (ms) | median / no candidate |")
    print("|---|---|---|---|")
    for name, times in results:
        times = sorted(times)
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        print(f"| {name} | {statistics.median(times):.1f} | {p90:.1f} | {statistics.median(times) / base:.2f} |")


if __name__ == "__main__":
    main()
