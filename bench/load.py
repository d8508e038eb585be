"""`qa-host serve` under concurrent load from a real load generator (oha) on loopback.

Starts `qa-host serve` on a free 127.0.0.1 port, waits for GET /health, then runs two phases
of POST / with oha: phase A (--requests-a, default 1,000) and phase B (--requests-b, default
9,000 more, 10,000 in all), reading the server's VmRSS and VmHWM from /proc after each.
Prints a markdown table (rps, p50/p99 latency, errors, RSS) and the RSS growth between the
phases, and writes the raw results to bench/results/load-<UTC timestamp>.json.

The timings are reported, never asserted. The script exits 1 when the service fails: any
response that is not a 200, any connection error or timeout, the server dying, the run
passing --max-seconds, or (not with --smoke) RSS growing more than --max-rss-growth percent
from phase A to phase B.

oha is pinned (OHA_VERSION): `oha` on PATH or ~/.cargo/bin/oha when its version matches,
else ~/.cache/qa-tools/oha-<version>/bin/oha, installed there once with
`cargo install oha --locked` (several minutes on a 2-core machine).

    source scripts/env.sh && python3 bench/load.py                # 1,000 + 9,000 requests, -c 8
    source scripts/env.sh && python3 bench/load.py --smoke        # 100 + 200 requests
    python3 bench/load.py --squad 8 --concurrency 16              # a mix of 8 SQuAD questions too
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import free_port

ROOT = Path(__file__).resolve().parent.parent
OHA_VERSION = "1.16.0"
OHA_ROOT = Path.home() / ".cache/qa-tools" / f"oha-{OHA_VERSION}"


def oha_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().removeprefix("oha ").strip() if out.returncode == 0 else None


def ensure_oha() -> str:
    """The pinned oha: one already installed, or `cargo install` into ~/.cache/qa-tools."""
    candidates = [shutil.which("oha"), str(Path.home() / ".cargo/bin/oha"), str(OHA_ROOT / "bin/oha")]
    for path in filter(None, candidates):
        if Path(path).exists() and oha_version(path) == OHA_VERSION:
            return path
    print(f"installing oha {OHA_VERSION} into {OHA_ROOT} (cargo install, several minutes) ...", file=sys.stderr)
    started = time.time()
    subprocess.run(["nice", "-n", "19", "cargo", "install", "oha", "--locked", "--version", OHA_VERSION,
                    "--root", str(OHA_ROOT)], check=True)
    path = str(OHA_ROOT / "bin/oha")
    if oha_version(path) != OHA_VERSION:
        raise SystemExit(f"oha at {path} does not report version {OHA_VERSION}")
    print(f"installed oha {OHA_VERSION} in {time.time() - started:.0f} s", file=sys.stderr)
    return path


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of the process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu": model, "cores": os.cpu_count(), "loadavg_before": os.getloadavg(),
            "kernel": platform.release()}


def bodies(squad: int) -> list[str]:
    """The sample request, then the first `squad` SQuAD questions, one JSON document each."""
    sample = json.loads((ROOT / "fixtures/benz.json").read_text())
    out = [json.dumps({"model_type": "nlp1", "question": sample["question"], "context": sample["context"]})]
    if squad:
        data = json.loads((ROOT / "fixtures/squad-dev-v1.1-sample.json").read_text())["data"]
        qas = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
        out += [json.dumps({"model_type": "nlp1", "question": q, "context": c}) for q, c in qas[:squad]]
    return out


class Server:
    def __init__(self, host_bin: Path, guest: Path, log: Path):
        env = dict(os.environ)
        env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".cache/onnxruntime/libonnxruntime.so"))
        env.setdefault("QA_MODELS_DIR", str(ROOT / "models"))
        env.setdefault("QA_CACHE_DIR", str(ROOT / "target/qa-cache"))
        self.port = free_port()
        self.log = log
        self.cmd = [str(host_bin), "serve", "--addr", f"127.0.0.1:{self.port}", "--guest", str(guest)]
        self.env = {k: env[k] for k in ("ORT_DYLIB_PATH", "QA_MODELS_DIR", "QA_CACHE_DIR")}
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))

    def wait_health(self, timeout: float) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                fail(f"qa-host serve exited with {self.proc.returncode} before /health answered", self)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                    return json.loads(resp.read())
            except OSError:
                time.sleep(0.1)
        fail(f"/health did not answer within {timeout:.0f} s", self)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def fail(message: str, server: Server | None = None) -> None:
    print(f"\n!!! LOAD TEST FAILED: {message}", file=sys.stderr)
    if server is not None:
        tail = server.log_tail()
        if tail:
            print(f"--- last lines of qa-host serve's stderr ({server.log}):\n{tail}", file=sys.stderr)
        server.stop()
    raise SystemExit(1)


def run_phase(oha: str, server: Server, body_file: Path, mixed: bool, requests: int, concurrency: int,
              timeout_s: float, out: Path) -> tuple[list[str], dict]:
    cmd = [oha, "-n", str(requests), "-c", str(concurrency), "--no-tui", "--output-format", "json",
           "-o", str(out), "-t", "60s", "-m", "POST", "-T", "application/json",
           "-Z" if mixed else "-D", str(body_file), f"http://127.0.0.1:{server.port}/"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        fail(f"oha did not finish {requests} requests within --max-seconds ({timeout_s:.0f} s were left)", server)
    if done.returncode != 0:
        fail(f"oha exited with {done.returncode}: {done.stderr.strip()}", server)
    return cmd, json.loads(out.read_text())


def summarize(name: str, requests: int, concurrency: int, report: dict, rss: dict) -> dict:
    statuses = {int(k): v for k, v in report.get("statusCodeDistribution", {}).items()}
    errors = report.get("errorDistribution", {})
    latency = report["metrics"]["latency_ms"]
    answered = sum(statuses.values())
    return {
        "phase": name, "requests": requests, "concurrency": concurrency,
        "rps": report["metrics"]["requests_per_sec"], "p50_ms": latency["p50"], "p99_ms": latency["p99"],
        "max_ms": latency["max"], "status_codes": statuses, "connection_errors": errors,
        "errors": sum(v for k, v in statuses.items() if k != 200) + sum(errors.values()) + max(0, requests - answered - sum(errors.values())),
        "rss_kib": rss["VmRSS"], "hwm_kib": rss["VmHWM"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_host = ROOT / "target/release/qa-host"
    if not default_host.exists():
        default_host = ROOT / "target/debug/qa-host"
    p.add_argument("--qa-host", type=Path, default=default_host, help="qa-host binary (default: %(default)s)")
    p.add_argument("--guest", type=Path, default=Path(os.environ.get("QA_GUEST") or ROOT / "target/wasm32-wasip2/release/qa-guest.wasm"),
                   help="guest component (default: $QA_GUEST or %(default)s)")
    p.add_argument("--requests-a", type=int, default=1000, help="phase A requests (default: %(default)s)")
    p.add_argument("--requests-b", type=int, default=9000, help="phase B requests, after A (default: %(default)s)")
    p.add_argument("--concurrency", "-c", type=int, default=8, help="oha connections (default: %(default)s)")
    p.add_argument("--squad", type=int, default=0, metavar="N",
                   help="also send the first N questions of fixtures/squad-dev-v1.1-sample.json, picked at random per request")
    p.add_argument("--smoke", action="store_true", help="100 + 200 requests; RSS growth is reported, not checked")
    p.add_argument("--max-seconds", type=float, default=900, help="bound on the whole run, start-up included (default: %(default)s)")
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="RSS growth from A to B that fails the run, %% (default: %(default)s)")
    args = p.parse_args()
    if args.smoke:
        args.requests_a, args.requests_b = 100, 200
    for path in (args.qa_host, args.guest):
        if not path.exists():
            raise SystemExit(f"{path} does not exist (build it, or pass --qa-host / --guest)")

    started = time.time()
    oha = ensure_oha()
    deadline = time.time() + args.max_seconds
    info = machine()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="qa-load-") as tmp_name:
        tmp = Path(tmp_name)
        docs = bodies(args.squad)
        mixed = len(docs) > 1
        body_file = tmp / ("bodies.jsonl" if mixed else "body.json")
        body_file.write_text("\n".join(docs) + "\n" if mixed else docs[0])
        server = Server(args.qa_host, args.guest, tmp / "serve.log")
        try:
            health = server.wait_health(max(1.0, min(120.0, deadline - time.time())))
            rss_start = proc_status(server.proc.pid)
            rows, raw, commands = [], {}, []
            for name, count in (("A", args.requests_a), ("B", args.requests_b)):
                left = deadline - time.time()
                if left <= 0:
                    fail(f"--max-seconds {args.max_seconds:.0f} passed before phase {name}", server)
                cmd, report = run_phase(oha, server, body_file, mixed, count, args.concurrency, left, tmp / f"oha-{name}.json")
                if server.proc.poll() is not None:
                    fail(f"qa-host serve exited with {server.proc.returncode} during phase {name} "
                         f"(oha saw status codes {report.get('statusCodeDistribution')}, errors {report.get('errorDistribution')})", server)
                rows.append(summarize(name, count, args.concurrency, report, proc_status(server.proc.pid)))
                raw[name] = report
                commands.append(shlex.join(cmd))
        finally:
            server.stop()
        serve_log = server.log_tail(20)

    growth = (rows[1]["rss_kib"] - rows[0]["rss_kib"]) / rows[0]["rss_kib"] * 100
    env_line = " ".join(f"{k}={shlex.quote(v)}" for k, v in server.env.items())

    problems = []
    for r in rows:
        if r["errors"]:
            problems.append(f"phase {r['phase']}: {r['errors']} errors (status codes {r['status_codes']}, "
                            f"connection errors {r['connection_errors']})")
    if not args.smoke and growth > args.max_rss_growth:
        problems.append(f"RSS grew {growth:.2f} % from phase A to phase B (limit {args.max_rss_growth} %)")

    results = ROOT / "bench/results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"load-{stamp}.json"
    out.write_text(json.dumps({
        "timestamp": stamp, "oha_version": OHA_VERSION, "oha": oha, "machine": info,
        "qa_host": str(args.qa_host), "guest": str(args.guest), "server_command": server.cmd, "server_env": server.env,
        "health": health, "bodies": len(docs), "smoke": args.smoke, "rss_before_requests_kib": rss_start,
        "phases": rows, "rss_growth_percent": growth, "oha_commands": commands, "oha_reports": raw,
        "command": shlex.join(["python3", *sys.argv]), "problems": problems, "wall_seconds": time.time() - started,
    }, indent=2) + "\n")

    print(f"`qa-host serve` under oha {OHA_VERSION}, loopback, POST / "
          f"({'sample request' if not mixed else f'sample request + {args.squad} SQuAD questions, random per request'})\n")
    print("| phase | requests | concurrency | rps | p50 ms | p99 ms | errors | RSS MiB after | peak RSS (VmHWM) MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['requests']:,} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']} | {r['rss_kib'] / 1024:.1f} | {r['hwm_kib'] / 1024:.1f} |")
    total = args.requests_a + args.requests_b
    print(f"\nRSS growth from phase A ({args.requests_a:,} requests) to phase B ({total:,} in all): {growth:+.2f} %"
          f"  (RSS after /health, before any request: {rss_start['VmRSS'] / 1024:.1f} MiB)")
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average before {', '.join(f'{x:.2f}' for x in info['loadavg_before'])}")
    print(f"server: {env_line} {shlex.join(server.cmd)}")
    for name, cmd in zip("AB", commands):
        print(f"phase {name}: {cmd}")
    print(f"this run: {shlex.join(['python3', *sys.argv])}")
    print(f"raw results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")

    if problems:
        print("\n!!! LOAD TEST FAILED:\n" + "\n".join(f"  - {x}" for x in problems), file=sys.stderr)
        if serve_log:
            print(f"--- last lines of qa-host serve's stderr:\n{serve_log}", file=sys.stderr)
        raise SystemExit(1)
    print("\nno errors" + ("" if args.smoke else f"; RSS growth within {args.max_rss_growth} %"))


if __name__ == "__main__":
    main()
