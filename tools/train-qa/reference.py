"""An independent reference for the CI gate: random SQuAD v1.1 dev questions and the answers
the transformers question-answering pipeline gives on the shipped ONNX model.

The pipeline runs the very file the project ships (`models/nlp1/model.onnx`, int8) through
Optimum's ONNX Runtime model class, with the project's decoding defaults (max_seq_len 384,
doc_stride 128, max_answer_len 15, top_k 1). Exact match and F1 are computed here with the
official script's normalization, not by the project's `eval`, so the gate compares the
project against numbers it did not produce.

    python reference.py --squad dev-v1.1.json --model models/nlp1 --sample 200 --seed 1 \
        --questions fixtures/squad-dev-v1.1-random200.json \
        --reference fixtures/squad-dev-v1.1-random200.reference.json

Needs transformers, torch, onnxruntime and optimum-onnx (`pip install optimum-onnx`).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import re
import shutil
import string
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SETTINGS = {"max_seq_len": 384, "doc_stride": 128, "max_answer_len": 15, "top_k": 1}


def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 evaluation script's normalization."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def sample(squad: dict, n: int, seed: int) -> dict:
    """n questions drawn at random from the whole file, kept in SQuAD's shape (articles,
    paragraphs) and in file order."""
    flat = [(a, p, q) for a, article in enumerate(squad["data"]) for p, para in enumerate(article["paragraphs"]) for q in range(len(para["qas"]))]
    picked = sorted(random.Random(seed).sample(range(len(flat)), n))
    data: list[dict] = []
    for a, p, q in (flat[i] for i in picked):
        article, para = squad["data"][a], squad["data"][a]["paragraphs"][p]
        if not data or data[-1]["title"] != article["title"]:
            data.append({"title": article["title"], "paragraphs": []})
        paragraphs = data[-1]["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != para["context"]:
            paragraphs.append({"context": para["context"], "qas": []})
        paragraphs[-1]["qas"].append(para["qas"][q])
    return {"version": squad.get("version", "1.1"), "data": data}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path, help="directory with model.onnx, tokenizer.json, config.json")
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--questions", required=True, type=Path, help="write the sampled questions here (SQuAD v1.1 JSON)")
    ap.add_argument("--reference", required=True, type=Path, help="write the pipeline's answers and scores here")
    args = ap.parse_args()

    import onnxruntime
    import optimum.onnxruntime
    import transformers
    from transformers import PreTrainedTokenizerFast, pipeline

    picked = sample(json.loads(args.squad.read_text(encoding="utf-8")), args.sample, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        # Optimum reads config.json and model.onnx from one directory; nothing else is needed.
        for name in ("model.onnx", "config.json"):
            shutil.copy(args.model / name, Path(tmp) / name)
        model = optimum.onnxruntime.ORTModelForQuestionAnswering.from_pretrained(tmp, file_name="model.onnx")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(args.model / "tokenizer.json"))
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)

    answers, em, f1_sum = {}, 0.0, 0.0
    for para in (p for article in picked["data"] for p in article["paragraphs"]):
        for q in para["qas"]:
            out = qa(question=q["question"], context=para["context"], **SETTINGS)
            answers[q["id"]] = {"text": out["answer"], "start": out["start"], "end": out["end"], "score": round(float(out["score"]), 6)}
            gold = [g["text"] for g in q["answers"]]
            em += max(float(normalize_answer(out["answer"]) == normalize_answer(g)) for g in gold)
            f1_sum += max(f1(out["answer"], g) for g in gold)
    n = len(answers)
    args.questions.write_text(json.dumps(picked, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    reference = {
        "made_by": "tools/train-qa/reference.py --sample %d --seed %d" % (args.sample, args.seed),
        "model_sha256": hashlib.sha256((args.model / "model.onnx").read_bytes()).hexdigest(),
        # The runtime matters: ONNX Runtime 1.31.1 changed 8 of these 200 answers of the int8
        # model against 1.22.1 (its quantized kernels round differently).
        "pipeline": {
            "transformers": transformers.__version__,
            "optimum-onnx": "ORTModelForQuestionAnswering",
            "onnxruntime": onnxruntime.__version__,
            **SETTINGS,
        },
        "total": n,
        "exact_match": round(100 * em / n, 3),
        "f1": round(100 * f1_sum / n, 3),
        "answers": answers,
    }
    args.reference.write_text(json.dumps(reference, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in reference.items() if k != "answers"}, indent=1))


if __name__ == "__main__":
    main()
