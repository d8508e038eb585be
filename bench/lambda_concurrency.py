"""Lambda's newer execution models, measured on this machine through the Runtime API protocol:

1. Managed Instances: one `qa-host` bootstrap with AWS_LAMBDA_MAX_CONCURRENCY = 1, 4 and 8,
   pinned to --vcpus CPUs (`taskset`; a Managed Instances environment owns its vCPUs), kept
   busy with that many invocations at all times (closed loop: each answer queues the next).
   Per concurrency and input (the sample question, and the sample question over a ~20 KB
   document with the sample's paragraph last): requests per second, per vCPU, and p50/p99
   latency from queueing the invocation to its response, plus the bootstrap's CPU time per
   request.
2. SnapStart: the time from the restore call's return to the first answer, against a normal
   cold start (process start to the first answer, the invocation already waiting), side by
   side in one run, alternating. What it cannot show: Lambda's own part of either (restoring
   the microVM and paging its memory in, or starting the environment), so it compares what
   the bootstrap does after each.
3. A Managed Instances cost row per concurrency: the instance price plus the management fee,
   divided by the measured throughput. The prices are inputs (--instance-usd-per-hour,
   --instance-vcpus, --management-fee, --request-usd-per-million): nothing here can reach a
   price list, and a row without its price says so.

The Runtime API is a small server in this script (cargo-lambda's emulator hands one bootstrap
one invocation at a time and has no /runtime/restore/next). Every setting a run used, every
sample and the machine go to --out (bench/results/lambda-concurrency-<UTC>.json).

    source scripts/env.sh && cargo build --release -p qa-host
    python3 bench/lambda_concurrency.py                 # the figures: run it on a quiet machine
    python3 bench/lambda_concurrency.py --smoke         # tiny sizes, to check the harness
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import long_docs  # noqa: E402  (the document builder and the dev set's place)

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


class RuntimeApi(ThreadingHTTPServer):
    """The Lambda Runtime API endpoints a bootstrap calls, on a loopback port: `/next` hands
    out queued invocations (to as many pollers as wait), `/response` and `/error` record the
    answer with its time, `/restore/next` waits until `restore` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.invocations: queue.Queue = queue.Queue()
        self.lock = threading.Condition()
        self.queued: dict[str, float] = {}
        self.answered: dict[str, tuple[float, bool, bytes]] = {}
        self.polling = 0
        self.restore_called = threading.Event()
        self.restore = threading.Event()
        self.init_errors: list[str] = []
        self.sequence = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request, client_address) -> None:
        # A bootstrap killed between runs drops its connections mid-request: not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def invoke(self, body: bytes) -> str:
        with self.lock:
            self.sequence += 1
            request_id = f"bench-{self.sequence:06d}"
            self.queued[request_id] = time.perf_counter()
        deadline_ms = int((time.time() + 600) * 1000)
        self.invocations.put((request_id, deadline_ms, body))
        return request_id

    def wait(self, what: str, ready, timeout: float = 300) -> None:
        with self.lock:
            if not self.lock.wait_for(ready, timeout):
                raise SystemExit(f"timed out waiting for {what}; init errors: {self.init_errors}")

    def answer(self, request_id: str, timeout: float = 600) -> tuple[float, bool, bytes]:
        self.wait(f"the answer to {request_id}", lambda: request_id in self.answered, timeout)
        return self.answered[request_id]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RuntimeApi

    def log_message(self, *_args) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        api = self.server
        if self.path.endswith("/runtime/invocation/next"):
            with api.lock:
                api.polling += 1
                api.lock.notify_all()
            request_id, deadline_ms, body = api.invocations.get()
            with api.lock:
                api.polling -= 1
            self.reply(200, body, {"Lambda-Runtime-Aws-Request-Id": request_id, "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                                   "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:123456789012:function:bench",
                                   "Content-Type": "application/json"})
        elif self.path.endswith("/runtime/restore/next"):
            api.restore_called.set()
            with api.lock:
                api.lock.notify_all()
            api.restore.wait()
            self.reply(200)
        else:
            self.reply(404)

    def do_POST(self) -> None:  # noqa: N802
        api = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = self.path.split("/")
        if len(parts) >= 2 and parts[-1] in ("response", "error") and parts[-3] == "invocation":
            with api.lock:
                api.answered[parts[-2]] = (time.perf_counter(), parts[-1] == "response", body)
                api.lock.notify_all()
            self.reply(202, b'{"status":"OK"}')
        elif self.path.endswith("/error"):
            with api.lock:
                api.init_errors.append(body.decode(errors="replace"))
                api.lock.notify_all()
            self.reply(202, b'{"status":"OK"}')
        else:
            self.reply(404)


def bootstrap(args, api: RuntimeApi, concurrency: int, extra: dict[str, str], log: Path) -> subprocess.Popen:
    """The bootstrap on `args.vcpus` CPUs, its environment what Lambda sets plus the host's paths."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ORT_DYLIB_PATH": os.environ.get("ORT_DYLIB_PATH", str(ROOT / ".cache/onnxruntime/libonnxruntime.so")),
        "QA_GUEST": str(args.guest),
        "QA_MODELS_DIR": str(ROOT / "models"),
        "QA_CACHE_DIR": os.environ.get("QA_CACHE_DIR", str(ROOT / "target/qa-cache")),
        "QA_LOG": "warn",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(args.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_MAX_CONCURRENCY": str(concurrency),
        **extra,
    }
    command = ["taskset", "-c", f"0-{args.vcpus - 1}", str(args.qa_host)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def closed_loop(api: RuntimeApi, body: bytes, concurrency: int, count: int) -> tuple[list[float], float, list[str]]:
    """`count` invocations with `concurrency` outstanding at all times: latencies (ms), the
    wall time from the first queued to the last answered (s), and the answers."""
    started = time.perf_counter()
    outstanding = [api.invoke(body) for _ in range(min(concurrency, count))]
    submitted, latencies, answers = len(outstanding), [], []
    while outstanding:
        with api.lock:
            api.lock.wait_for(lambda: any(i in api.answered for i in outstanding), 600)
            done = [i for i in outstanding if i in api.answered]
        if not done:
            raise SystemExit(f"no answer within 600 s; init errors: {api.init_errors}")
        for request_id in done:
            outstanding.remove(request_id)
            at, ok, reply = api.answered[request_id]
            latencies.append((at - api.queued[request_id]) * 1e3)
            answer = json.loads(reply).get("Answer") if ok else None
            if answer is None:
                raise SystemExit(f"invocation {request_id} failed: {reply[:500]!r}")
            answers.append(answer)
            if submitted < count:
                outstanding.append(api.invoke(body))
                submitted += 1
    return latencies, time.perf_counter() - started, answers


def throughput(args, inputs: dict[str, bytes], concurrency: int, log_dir: Path) -> dict:
    api = RuntimeApi()
    host = bootstrap(args, api, concurrency, {"QA_PRELOAD": "nlp1"}, log_dir / f"concurrency-{concurrency}.log")
    try:
        api.wait(f"{concurrency} pollers", lambda: api.polling == concurrency or host.poll() is not None)
        if host.poll() is not None:
            raise SystemExit(f"the bootstrap exited {host.returncode}; see {log_dir}")
        rows = {}
        for name, body in inputs.items():
            closed_loop(api, body, concurrency, args.warmup)
            cpu_before = cpu_seconds(host.pid)
            latencies, wall, answers = closed_loop(api, body, concurrency, args.requests)
            cpu = cpu_seconds(host.pid) - cpu_before
            rps = len(latencies) / wall
            rows[name] = {"requests": len(latencies), "wall_s": wall, "rps": rps, "rps_per_vcpu": rps / args.vcpus,
                          "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99),
                          "cpu_ms_per_request": cpu * 1e3 / len(latencies), "answers": sorted(set(answers)),
                          "latencies_ms": latencies}
        return rows
    finally:
        host.kill()
        host.wait()
        api.shutdown()
        api.server_close()


def cold_start(args, body: bytes, snap_start: bool, log: Path) -> dict:
    """One start: on demand (process start to the first answer, the invocation waiting) or
    from SnapStart's restore call (its return to the first answer; init before it)."""
    api = RuntimeApi()
    extra = {"AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"} if snap_start else {"QA_PRELOAD": "nlp1"}
    if not snap_start:
        request_id = api.invoke(body)
    started = time.perf_counter()
    host = bootstrap(args, api, 1, extra, log)
    try:
        if snap_start:
            api.wait("the restore call", lambda: api.restore_called.is_set() or host.poll() is not None)
            if host.poll() is not None:
                raise SystemExit(f"the bootstrap exited {host.returncode}; see {log}")
            init = time.perf_counter() - started
            request_id = api.invoke(body)
            started = time.perf_counter()
            api.restore.set()
        at, ok, reply = api.answer(request_id)
        if not ok or "Answer" not in json.loads(reply):
            raise SystemExit(f"the first invocation failed: {reply[:500]!r}")
        result = {"to_first_answer_ms": (at - started) * 1e3}
        if snap_start:
            result["init_before_snapshot_ms"] = init * 1e3
        return result
    finally:
        host.kill()
        host.wait()
        api.shutdown()
        api.server_close()


def cost_row(args, rps_per_vcpu: float) -> str:
    """USD per million questions on Managed Instances at the measured throughput."""
    if args.instance_usd_per_hour is None or args.instance_vcpus is None or args.management_fee is None:
        return "input needed (--instance-usd-per-hour, --instance-vcpus, --management-fee)"
    hourly = args.instance_usd_per_hour * (1 + args.management_fee)
    per_second = rps_per_vcpu * args.instance_vcpus * args.utilization
    compute = hourly / 3600 / per_second * 1e6
    requests = args.request_usd_per_million if args.request_usd_per_million is not None else float("nan")
    return f"{compute:,.3f} + {requests:,.2f} requests = {compute + requests:,.3f}" if not math.isnan(requests) else \
        f"{compute:,.3f} (+ the per-request charge: --request-usd-per-million)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    release = ROOT / "target/release/qa-host"
    p.add_argument("--qa-host", type=Path, default=release if release.exists() else ROOT / "target/debug/qa-host")
    p.add_argument("--guest", type=Path, default=Path(os.environ.get("QA_GUEST", ROOT / "target/wasm32-wasip2/release/qa-guest.wasm")))
    p.add_argument("--concurrency", default="1,4,8", help="AWS_LAMBDA_MAX_CONCURRENCY values")
    p.add_argument("--vcpus", type=int, default=min(2, os.cpu_count() or 1), help="CPUs the bootstrap is pinned to")
    p.add_argument("--memory-mb", type=int, default=None, help="AWS_LAMBDA_FUNCTION_MEMORY_SIZE (default 2,048 per vCPU)")
    p.add_argument("--requests", type=int, default=400, help="timed invocations per concurrency and input")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--cold-runs", type=int, default=7, help="starts of each kind, alternating")
    p.add_argument("--document-kb", type=int, default=20)
    p.add_argument("--squad", type=Path, default=long_docs.DEV if long_docs.DEV.exists() else ROOT / "fixtures/squad-dev-v1.1-random200.json")
    p.add_argument("--instance-usd-per-hour", type=float, help="on-demand price of the capacity provider's instance type (input: not checked here)")
    p.add_argument("--instance-vcpus", type=int, help="vCPUs of that instance type")
    p.add_argument("--management-fee", type=float, help="Lambda's management fee as a fraction of the instance price (input: not checked here)")
    p.add_argument("--request-usd-per-million", type=float, help="the per-request charge (input: not checked here)")
    p.add_argument("--utilization", type=float, default=1.0, help="share of the instance's time spent at the measured throughput")
    p.add_argument("--prices-source", default="", help="where the prices came from, and its date (printed with the row)")
    p.add_argument("--out", type=Path)
    p.add_argument("--smoke", action="store_true", help="--requests 8 --warmup 2 --cold-runs 1 --concurrency 1,4")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.warmup, args.cold_runs, args.concurrency = 8, 2, 1, "1,4"
    args.memory_mb = args.memory_mb or 2048 * args.vcpus
    if not args.qa_host.exists():
        sys.exit(f"{args.qa_host} not found: cargo build --release -p qa-host")

    benz = json.loads((ROOT / "fixtures/benz.json").read_text())
    document = long_docs.document(args.squad, benz["context"], args.document_kb * 1000)
    inputs = {"sample": json.dumps(benz).encode(),
              f"{len(document.encode()) / 1000:.0f} KB document": json.dumps({**benz, "context": document}).encode()}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / f"bench/results/lambda-concurrency-{stamp}.json"
    log_dir = out.with_suffix(".logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    levels = [int(c) for c in args.concurrency.split(",")]
    measured = {n: throughput(args, inputs, n, log_dir) for n in levels}
    cold: dict[str, list[dict]] = {"on-demand": [], "snap-start": []}
    for run in range(args.cold_runs):
        for kind in ("on-demand", "snap-start") if run % 2 == 0 else ("snap-start", "on-demand"):
            cold[kind].append(cold_start(args, inputs["sample"], kind == "snap-start", log_dir / f"cold-{kind}-{run}.log"))

    print(f"Managed Instances: one bootstrap ({args.qa_host.relative_to(ROOT) if args.qa_host.is_relative_to(ROOT) else args.qa_host}) "
          f"pinned to {args.vcpus} vCPU(s), {args.memory_mb} MB, the given number of invocations outstanding at all times; "
          f"{args.requests} timed invocations after {args.warmup} untimed, latency from queueing to the response:\n")
    print("| AWS_LAMBDA_MAX_CONCURRENCY | input | requests/s | requests/s per vCPU | p50 (ms) | p99 (ms) | CPU ms per request |")
    print("|---|---|---|---|---|---|---|")
    for n in levels:
        for name, r in measured[n].items():
            print(f"| {n} | {name} | {r['rps']:.1f} | {r['rps_per_vcpu']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_ms_per_request']:.1f} |")
    print(f"\nCold start, {args.cold_runs} of each alternating (medians; the bootstrap's part only, Lambda's own part of either is not here):\n")
    print("| start | to the first answer (ms) | init before the snapshot (ms) |")
    print("|---|---|---|")
    on_demand = statistics.median(r["to_first_answer_ms"] for r in cold["on-demand"])
    restored = statistics.median(r["to_first_answer_ms"] for r in cold["snap-start"])
    init = statistics.median(r["init_before_snapshot_ms"] for r in cold["snap-start"])
    print(f"| normal cold start: process start to the first answer (QA_PRELOAD=nlp1) | {on_demand:.0f} | |")
    print(f"| SnapStart: the restore call's return to the first answer | {restored:.0f} | {init:.0f} |")
    print("\nManaged Instances, USD per million questions (instance price x (1 + management fee) / measured throughput"
          f" x utilization {args.utilization}, plus the per-request charge):\n")
    print("| AWS_LAMBDA_MAX_CONCURRENCY | input | cost per million questions |")
    print("|---|---|---|")
    for n in levels:
        for name, r in measured[n].items():
            print(f"| {n} | {name} | {cost_row(args, r['rps_per_vcpu'])} |")
    prices = args.prices_source or "none given: every price above is an input of this run, not checked here"
    print(f"\nprices: {prices}")
    load_after = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load_before} before, {load_after} after")
    print(f"command: {' '.join(sys.argv)}")
    print(f"raw results: {out}")
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "throughput": measured, "cold": cold,
                               "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after,
                                           "kernel": platform.release()}}, indent=1))


if __name__ == "__main__":
    main()
