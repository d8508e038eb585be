"""Two guests side by side on the same host and model: one release `qa-host serve` per guest,
both warm, requests alternating between them round by round (the order flips every round), so
the machine's noise falls on both alike. The request is the sample question over a long
document of SQuAD dev paragraphs with the Benz paragraph last (as in `long_docs.py`). Prints
each guest's median wall time and inference time, its server's peak RSS, the answers, and the
ratio.

    source scripts/env.sh && cargo build --release -p qa-host
    cp target/wasm32-wasip2/release/qa-guest.wasm /tmp/old-guest.wasm   # before the change
    cargo build --release -p qa-guest --target wasm32-wasip2              # after it
    python3 bench/guest_ab.py /tmp/old-guest.wasm target/wasm32-wasip2/release/qa-guest.wasm --kb 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from common import start_host
from long_docs import DEV, ROOT, ask, document, peak_rss_mib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path, help="the guest (.wasm) to compare against")
    p.add_argument("new", type=Path, help="the guest (.wasm) being measured")
    p.add_argument("--kb", type=int, default=100, help="document size in KB (1,000 bytes)")
    p.add_argument("--rounds", type=int, default=10, help="timed requests per guest (after two untimed)")
    p.add_argument("--decoding", default="document", help="the request's `decoding`")
    p.add_argument("--squad", type=Path, default=DEV)
    p.add_argument("--qa-host", type=Path, default=ROOT / "target/release/qa-host")
    args = p.parse_args()
    if not args.squad.is_file():
        sys.exit(f"{args.squad} not found: run `bash tools/train-qa/run.sh` once, or give --squad")
    sample = json.loads((ROOT / "fixtures/benz.json").read_text())
    body = {"question": sample["question"], "context": document(args.squad, sample["context"], args.kb * 1000),
            "decoding": args.decoding}
    guests = [args.old.resolve(), args.new.resolve()]
    servers = []
    try:
        for guest in guests:
            env = dict(os.environ, QA_PRELOAD="nlp1", QA_MODELS_DIR=str(ROOT / "models"), QA_LOG="warn", QA_GUEST=str(guest))
            servers.append(start_host(args.qa_host, env))
        for _, base in servers:
            for _ in range(2):
                ask(base, body)
        walls: list[list[float]] = [[], []]
        inference: list[list[float]] = [[], []]
        answers: list[set] = [set(), set()]
        for round_ in range(args.rounds):
            for i in (0, 1) if round_ % 2 == 0 else (1, 0):
                status, reply, wall = ask(servers[i][1], body)
                if status != 200:
                    sys.exit(f"{guests[i]} answered {status}: {reply}")
                walls[i].append(wall)
                inference[i].append(reply["timings_ms"]["inference"])
                answers[i].add(reply["Answer"])
        peaks = [peak_rss_mib(proc.pid) for proc, _ in servers]
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait()
    print("| guest | wall ms | inference ms | peak RSS | answers |")
    print("|---|---|---|---|---|")
    for i, guest in enumerate(guests):
        print(f"| {guest.name} ({'old' if i == 0 else 'new'}) | {statistics.median(walls[i]):,.0f} | "
              f"{statistics.median(inference[i]):,.0f} | {peaks[i]:.0f} MiB | {', '.join(sorted(answers[i]))} |")
    print(f"\nnew / old wall: {statistics.median(walls[1]) / statistics.median(walls[0]):.3f}; medians of {args.rounds} "
          f"alternating rounds; {len(body['context'].encode()):,} B, decoding {args.decoding}; load average {os.getloadavg()}")
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
