"""Eight questions over one document: one request with `questions` against eight requests
with one `question` each, sent one after another, through a warm release `qa-host serve`
(model preloaded, guest snapshot ready). Documents of about 2 KB and 20 KB: SQuAD dev
paragraphs in file order with the Karl Benz paragraph last; the questions are the sample's
and the first seven dev questions of the document's other paragraphs. Prints per document the
medians over alternating runs of wall time (client side) and the server's CPU time
(user + system, from /proc), and the ratio eight calls / one call.

    source scripts/env.sh && cargo build --release -p qa-host
    python3 bench/many_questions.py --runs 5

Uses the SQuAD dev file of the training setup (or --squad), like bench/long_docs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import long_docs  # noqa: E402  (the same request and document helpers)
from common import start_host  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e3 / TICKS


def document_and_questions(squad: Path, benz: dict, size: int) -> tuple[str, list[str]]:
    """The document of `size` bytes and eight questions about it."""
    data = json.loads(squad.read_text())["data"]
    paragraphs = [p for a in data for p in a["paragraphs"]]
    chosen, used = [], len(benz["context"].encode())
    for paragraph in paragraphs:
        if used + len(paragraph["context"].encode()) + 2 > size:
            break
        chosen.append(paragraph)
        used += len(paragraph["context"].encode()) + 2
    questions = [benz["question"]] + [qa["question"] for p in chosen for qa in p["qas"]][:7]
    if len(questions) < 8:
        sys.exit(f"a {size}-byte document has only {len(questions)} questions")
    return "\n\n".join([p["context"] for p in chosen] + [benz["context"]]), questions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2,20", help="document sizes in KB (1,000 bytes)")
    p.add_argument("--runs", type=int, default=5, help="alternating timed runs of each way (after one untimed)")
    p.add_argument("--squad", type=Path, default=long_docs.DEV)
    p.add_argument("--qa-host", type=Path, default=ROOT / "target/release/qa-host")
    args = p.parse_args()
    benz = json.loads((ROOT / "fixtures/benz.json").read_text())
    env = dict(os.environ, QA_PRELOAD="nlp1", QA_MODELS_DIR=str(ROOT / "models"), QA_LOG=os.environ.get("QA_LOG", "warn"))
    proc, base = start_host(args.qa_host, env)
    rows = []
    try:
        for size_kb in [int(s) for s in args.sizes.split(",")]:
            context, questions = document_and_questions(args.squad, benz, size_kb * 1000)

            def one_call() -> tuple[float, float, list[str]]:
                cpu = cpu_ms(proc.pid)
                status, reply, wall = long_docs.ask(base, {"questions": questions, "context": context})
                assert status == 200, reply
                return wall, cpu_ms(proc.pid) - cpu, [r.get("Answer") for r in reply["results"]]

            def eight_calls() -> tuple[float, float, list[str]]:
                cpu, wall, answers = cpu_ms(proc.pid), 0.0, []
                for question in questions:
                    status, reply, took = long_docs.ask(base, {"question": question, "context": context})
                    assert status == 200, reply
                    wall += took
                    answers.append(reply["Answer"])
                return wall, cpu_ms(proc.pid) - cpu, answers

            one_call(), eight_calls()
            samples = {"one": [], "eight": []}
            for _ in range(args.runs):
                samples["one"].append(one_call())
                samples["eight"].append(eight_calls())
            same = all(o[2] == e[2] for o, e in zip(samples["one"], samples["eight"]))
            med = {k: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v)) for k, v in samples.items()}
            rows.append((len(context.encode()), med, same))
            print(f"[many_questions] {size_kb} KB done", file=sys.stderr, flush=True)
    finally:
        proc.kill()
        proc.wait()
    print("| document | 1 call: wall ms | 1 call: server CPU ms | 8 calls: wall ms | 8 calls: server CPU ms | wall 8/1 | CPU 8/1 | same answers |")
    print("|---|---|---|---|---|---|---|---|")
    for size, med, same in rows:
        (w1, c1), (w8, c8) = med["one"], med["eight"]
        print(f"| {size:,} B | {w1:,.0f} | {c1:,.0f} | {w8:,.0f} | {c8:,.0f} | {w8 / w1:.2f}x | {c8 / c1:.2f}x | {'yes' if same else 'NO'} |")
    print(f"\nmedians of {args.runs} alternating runs after one untimed; {os.cpu_count()} CPUs; load average {os.getloadavg()}")
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
