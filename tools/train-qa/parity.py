"""Compare the project's answers with the transformers question-answering pipeline.

Both sides use the same weights (the fp32 export and its PyTorch twin), max_seq_len 384,
doc_stride 128, max_answer_len 15, top_k 1. The project is asked through `qa-host serve`
over loopback HTTP; the reference is `transformers.pipeline("question-answering")` on
PyTorch. An answer agrees when both the text and the character span are equal.

    python parity.py --hf-model DIR --onnx-model DIR --squad dev-v1.1.json --limit 500 \
        --host target/debug/qa-host --guest target/wasm32-wasip2/release/qa-guest.wasm
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def questions(path: Path, limit: int) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    out = []
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                out.append({"id": qa["id"], "question": qa["question"], "context": para["context"]})
                if len(out) == limit:
                    return out
    return out


def start_host(host: str, guest: str, models: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, QA_GUEST=guest, QA_MODELS_DIR=str(models))
    proc = subprocess.Popen([host, "serve", "--addr", "127.0.0.1:0"], env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("qa-host: listening on "):
            return proc, line.split("listening on ", 1)[1].strip()
    raise SystemExit("qa-host serve exited before listening")


def ask(base: str, q: dict) -> dict:
    # The pipeline's own decoding; the default (document) cuts and compares windows otherwise.
    body = json.dumps({"model_type": "parity", "question": q["question"], "context": q["context"], "decoding": "pipeline"}).encode()
    req = urllib.request.Request(base + "/", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-model", required=True, type=Path)
    p.add_argument("--onnx-model", required=True, type=Path, help="directory with model.onnx, tokenizer.json, config.json")
    p.add_argument("--squad", required=True, type=Path)
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--host", required=True)
    p.add_argument("--guest", required=True)
    p.add_argument("--report", type=Path, help="write every disagreement here as JSON")
    args = p.parse_args()

    import torch
    from transformers import pipeline

    torch.set_num_threads(os.cpu_count() or 1)
    qa = pipeline("question-answering", model=str(args.hf_model), tokenizer=str(args.hf_model), device=-1)
    items = questions(args.squad, args.limit)

    with tempfile.TemporaryDirectory() as models:
        target = Path(models) / "parity"
        target.mkdir()
        for name in ("model.onnx", "tokenizer.json", "config.json"):
            shutil.copy(args.onnx_model / name, target / name)
        proc, base = start_host(args.host, args.guest, Path(models))
        try:
            agree = 0
            disagreements = []
            t_ref = t_ours = 0.0
            for q in items:
                t0 = time.perf_counter()
                ref = qa(question=q["question"], context=q["context"], max_seq_len=384, doc_stride=128, max_answer_len=15, top_k=1)
                t1 = time.perf_counter()
                ours = ask(base, q)
                t2 = time.perf_counter()
                t_ref += t1 - t0
                t_ours += t2 - t1
                same = ref["answer"] == ours["Answer"] and ref["start"] == ours["start"] and ref["end"] == ours["end"]
                agree += same
                if not same:
                    disagreements.append({
                        "id": q["id"],
                        "reference": {"text": ref["answer"], "start": ref["start"], "end": ref["end"], "score": ref["score"]},
                        "ours": {"text": ours["Answer"], "start": ours["start"], "end": ours["end"], "score": ours["score"]},
                    })
        finally:
            proc.terminate()
            proc.wait()

    n = len(items)
    print(json.dumps({
        "questions": n,
        "agree": agree,
        "agreement_rate": agree / n,
        "reference_seconds": round(t_ref, 2),
        "ours_seconds": round(t_ours, 2),
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }, indent=2))
    if args.report:
        args.report.write_text(json.dumps(disagreements, indent=2, ensure_ascii=False) + "\n")
    for d in disagreements[:20]:
        print(json.dumps(d, ensure_ascii=False), file=sys.stderr)


if __name__ == "__main__":
    main()
