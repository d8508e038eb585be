"""Lambda init and first-request time, models preloaded (QA_PRELOAD) versus loaded on demand.

Each run starts cargo-lambda's Runtime API emulator and a fresh `qa-host` bootstrap, then
measures: init (process start until the bootstrap polls for its first event, read from the
"ready" log line), first request and second request (Invoke API round trips). Prints a
markdown table of medians over --runs runs.

    source scripts/env.sh && python3 bench/lambda_init.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from common import free_port, invoke, wait_port

ROOT = Path(__file__).resolve().parent.parent


def measure(cargo_lambda: str, command: list[str], env: dict[str, str], ready_marker: str, cwd: Path = ROOT) -> tuple[float, float, float]:
    """Starts the emulator and `command` as the bootstrap with `env` added to the runtime's
    variables; init (until `ready_marker` is logged), then the first and second requests, in ms."""
    port = free_port()
    emulator = subprocess.Popen([cargo_lambda, "lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", str(port)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        env = {**env, "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{port}/.rt", "AWS_LAMBDA_FUNCTION_NAME": "_",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "4096", "AWS_LAMBDA_FUNCTION_VERSION": "1", "QA_LOG": "info"}
        started = time.perf_counter()
        host = subprocess.Popen(command, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
        for line in host.stderr:
            if ready_marker in line:
                break
        init_ms = (time.perf_counter() - started) * 1e3
        event = json.loads((ROOT / "fixtures/benz.json").read_text())
        first = invoke(port, event)
        second = invoke(port, event)
        host.kill()
        host.wait()
        return init_ms, first, second
    finally:
        emulator.kill()
        emulator.wait()


def one_run(cargo_lambda: str, preload: bool) -> tuple[float, float, float]:
    env = dict(os.environ)
    env.pop("QA_PRELOAD", None)
    if preload:
        env["QA_PRELOAD"] = "nlp1"
    return measure(cargo_lambda, [str(ROOT / "target/debug/qa-host")], env, "preloaded" if preload else "guest ready")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cargo-lambda", default=str(ROOT / ".cache/tools-venv/bin/cargo-lambda"))
    args = p.parse_args()
    print("| mode | init (ms) | first request (ms) | second request (ms) |")
    print("|---|---|---|---|")
    for preload in (True, False):
        runs = [one_run(args.cargo_lambda, preload) for _ in range(args.runs)]
        med = [statistics.median(r[i] for r in runs) for i in range(3)]
        name = "QA_PRELOAD=nlp1 (outside the handler)" if preload else "on demand (inside the handler)"
        print(f"| {name} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} |")


if __name__ == "__main__":
    main()
