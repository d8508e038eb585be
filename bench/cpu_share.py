"""The sample question at Lambda-sized CPU shares: `qa-host serve` in a cgroup whose CPU quota
is what a function of each memory size gets (1,769 MB is one vCPU, enforced as a CFS quota
while the process still sees every core), with three inference settings side by side:

- default: what the host derives from the quota (threads = the share rounded up, spinning
  only when every busy thread has a whole CPU; docs/configuration.md);
- 1 thread, no spinning: `QA_INFERENCE_THREADS=1 QA_INFERENCE_SPINNING=off`;
- ONNX Runtime's own: one thread per visible core, spinning, one session per model
  (`QA_INFERENCE_THREADS=0 QA_INFERENCE_SPINNING=on QA_INFERENCE_CONCURRENCY=1`), what the host
  did before it read the share.

Per memory size and setting: --requests sequential requests of fixtures/benz.json after
--warmup untimed ones; p50/p99 latency from the client, and the server's CPU time per
request (utime + stime from /proc over the timed requests). The ideal is the CPU one request
takes with one thread and no spinning and no quota, divided by the share (below one vCPU: the
work cannot go faster than the quota lets it); the last column is p50 over it.

The quota goes through cgroup v1's `cpu` controller or cgroup v2 (`cpu.max`), so this needs a
writable one (root). Shares above the machine's cores are capped at its cores, and said so.

    source scripts/env.sh && cargo build -p qa-host       # or --release, then --qa-host
    python3 bench/cpu_share.py                            # 512, 1,024, 1,769 and 3,008 MB
    python3 bench/cpu_share.py --smoke                    # 512 MB, few requests: the harness
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from common import serve

ROOT = Path(__file__).resolve().parent.parent
VCPU_MB = 1769
PERIOD_US = 100_000
SETTINGS = {
    "default": {},
    "1 thread, no spinning": {"QA_INFERENCE_THREADS": "1", "QA_INFERENCE_SPINNING": "off"},
    "ONNX Runtime's own": {"QA_INFERENCE_THREADS": "0", "QA_INFERENCE_SPINNING": "on", "QA_INFERENCE_CONCURRENCY": "1"},
}


def cpu_cgroup_root() -> tuple[Path, str]:
    """Where a CPU-quota cgroup can be made: cgroup v1's `cpu` mount, else the v2 mount."""
    v2 = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, _, options = (after.split() + [""] * 3)[:3]
        mount = Path(before.split()[4])
        if fstype == "cgroup" and "cpu" in options.split(","):
            return mount, "v1"
        if fstype == "cgroup2":
            v2 = mount
    if v2 is None:
        sys.exit("cpu_share: no cgroup v1 cpu controller or cgroup v2 mount")
    return v2, "v2"


class Quota:
    """A cgroup allowing `share` CPUs (a fraction of one, or several), removed on exit."""

    def __init__(self, share: float):
        root, version = cpu_cgroup_root()
        self.dir = root / f"qa-bench-share-{os.getpid()}-{int(share * 1000)}"
        quota = max(1000, round(share * PERIOD_US))
        try:
            if version == "v1":
                self.dir.mkdir(exist_ok=True)
                (self.dir / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.dir / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (root / "cgroup.subtree_control").write_text("+cpu")
                self.dir.mkdir(exist_ok=True)
                (self.dir / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        except OSError as e:
            sys.exit(f"cpu_share: cannot make a CPU-quota cgroup under {root} (run as root): {e}")

    def wrap(self, command: list[str]) -> list[str]:
        # The shell moves itself in, then becomes the host: the host reads its quota at start.
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.dir), *command]

    def __enter__(self) -> "Quota":
        return self

    def __exit__(self, *_) -> None:
        try:
            self.dir.rmdir()
        except OSError:
            pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(qa_host: Path, share: float | None, extra: dict, requests: int, warmup: int) -> dict:
    env = dict(os.environ, QA_LOG="warn,qa_host::service=info", **extra)
    command = [str(qa_host), "serve", "--addr", "127.0.0.1:0"]
    quota = Quota(share) if share is not None else None
    before: list[str] = []
    proc, base = serve(quota.wrap(command) if quota else command, env, ROOT, before=before)
    try:
        body = (ROOT / "fixtures/benz.json").read_bytes()

        def ask() -> float:
            started = time.perf_counter()
            request = urllib.request.Request(base + "/", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read())
            assert answer.get("Answer") == "1886", answer
            return (time.perf_counter() - started) * 1e3

        for _ in range(warmup):
            ask()
        cpu_before = cpu_seconds(proc.pid)
        times = [ask() for _ in range(requests)]
        cpu = (cpu_seconds(proc.pid) - cpu_before) * 1e3 / requests
    finally:
        proc.kill()
        proc.wait()
        if quota:
            quota.__exit__()
    sized = next((line.strip() for line in before if "inference sized" in line), "")
    chosen = " ".join(f for f in sized.split() if f.startswith(("threads=", "sessions_per_model=", "spinning=")))
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
        "cpu_ms_per_request": cpu,
        "chosen": chosen,
        "samples_ms": times,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qa-host", type=Path, default=ROOT / "target/debug/qa-host")
    p.add_argument("--memory", default="512,1024,1769,3008", help="function memory sizes in MB")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", type=Path)
    p.add_argument("--smoke", action="store_true", help="--memory 512 --requests 5 --warmup 2")
    args = p.parse_args()
    if args.smoke:
        args.memory, args.requests, args.warmup = "512", 5, 2
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    # The ideal's numerator: one request's CPU with one thread, no spinning, no quota.
    floor = measure(args.qa_host, None, SETTINGS["1 thread, no spinning"], args.requests, args.warmup)
    rows = []
    for memory in [int(m) for m in args.memory.split(",")]:
        share = min(memory / VCPU_MB, cores)
        ideal = floor["cpu_ms_per_request"] / min(share, 1.0)
        for name, extra in SETTINGS.items():
            result = measure(args.qa_host, share, extra, args.requests, args.warmup)
            rows.append({"memory_mb": memory, "share": share, "settings": name, "ideal_ms": ideal, **result})
            print(f"{memory} MB {name}: p50 {result['p50_ms']:.1f} ms", file=sys.stderr)
    print(f"\nThe sample question, {args.requests} sequential requests after {args.warmup}, `qa-host serve` "
          f"under a CPU quota ({platform.processor() or platform.machine()}, {cores} CPUs; {args.qa_host}). "
          f"One request's CPU with 1 thread, no spinning, no quota: {floor['cpu_ms_per_request']:.1f} ms "
          f"(p50 {floor['p50_ms']:.1f} ms).\n")
    print("| memory (MB) | vCPU share | settings | chosen | p50 (ms) | p99 (ms) | CPU per request (ms) | p50 ÷ ideal |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        capped = " (capped at the cores)" if r["memory_mb"] / VCPU_MB > cores else ""
        print(f"| {r['memory_mb']:,} | {r['share']:.2f}{capped} | {r['settings']} | {r['chosen'] or '?'} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_ms_per_request']:.1f} | {r['p50_ms'] / r['ideal_ms']:.2f}× |")
    print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"command: python3 bench/cpu_share.py {' '.join(sys.argv[1:])}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / f"bench/results/cpu-share-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"floor": floor, "rows": rows, "machine": platform.uname()._asdict(), "args": vars(args)}, default=str, indent=1))


if __name__ == "__main__":
    main()
