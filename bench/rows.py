"""Python runners for bench/compare.py: the two things a Python user would run instead of
this project, under the runner protocol of bench/README.md.

    --row pipeline   transformers pipeline("question-answering") on PyTorch (CPU), weights
                     from --model-dir (a Hugging Face directory: config.json,
                     model.safetensors, tokenizer files)
    --row onnx       onnxruntime InferenceSession on --model-dir/model.onnx (default session
                     options) + tokenizers.Tokenizer.from_file(--model-dir/tokenizer.json),
                     decoding in numpy

Both use the transformers pipeline defaults, which are also the project's (read from
guest/options/defaults.json): max_seq_len, doc_stride, max_answer_len, top_k, max_question_len.

    python bench/rows.py --row onnx --model-dir models/nlp1 --inputs inputs.json --iters 20

stdout, one JSON object per line: {"event":"first",...} once the first input is answered,
then (unless --iters 0) an untimed pass over all inputs, --iters timed passes, and
{"event":"done","times_ms":{id:[...]},"answers":{id:{...}},"info":{...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# The project's defaults, from its one list of them.
DEFAULTS = json.loads((Path(__file__).resolve().parent.parent / "guest/options/defaults.json").read_text())
TOP_K = DEFAULTS["top_k"]
MAX_ANSWER_LEN = DEFAULTS["max_answer_len"]
MAX_SEQ_LEN = DEFAULTS["max_seq_len"]
DOC_STRIDE = DEFAULTS["doc_stride"]
MAX_QUESTION_LEN = DEFAULTS["max_question_len"]


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def process_threads() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# --- row 4: the transformers question-answering pipeline -----------------------------------


class PipelineRow:
    def __init__(self, model_dir: str):
        import torch
        import transformers
        from transformers import pipeline

        self.qa = pipeline("question-answering", model=model_dir, tokenizer=model_dir, device="cpu")
        self.info = {
            "runtime": f"transformers {transformers.__version__}, torch {torch.__version__}",
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "dtype": str(next(self.qa.model.parameters()).dtype),
        }

    def answer(self, question: str, context: str) -> dict:
        out = self.qa(question=question, context=context, top_k=TOP_K, max_answer_len=MAX_ANSWER_LEN,
                      max_seq_len=MAX_SEQ_LEN, doc_stride=DOC_STRIDE, max_question_len=MAX_QUESTION_LEN)
        if isinstance(out, list):
            out = out[0]
        return {"text": out["answer"], "start": int(out["start"]), "end": int(out["end"]), "score": float(out["score"])}


# --- row 5: onnxruntime + tokenizers + numpy -------------------------------------------------


class OnnxRow:
    """What a user would write instead: one tokenizer call that cuts the windows, all windows of
    a question in one batch through ONNX Runtime, masked softmax and span search in numpy,
    word-aligned character offsets from the tokenizer. Same decoding rules as the pipeline:
    the [CLS] token stays in the softmax and is then zeroed, the best 2*top_k+10 spans of
    each window are widened to whole words, and answers of the same text (ignoring case)
    from several windows add their scores."""

    def __init__(self, model_dir: str):
        import numpy as np
        import onnxruntime as ort
        import tokenizers

        self.np = np
        d = Path(model_dir)
        self.session = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_SEQ_LEN, stride=DOC_STRIDE, strategy="only_second")
        config = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
        self.pad_id = int(config.get("pad_token_id", 0) or 0)
        # Spans (s, e) with s <= e < s + MAX_ANSWER_LEN, for every sequence length seen.
        self._band: dict[int, object] = {}
        so = self.session.get_session_options()
        self.info = {
            "runtime": f"onnxruntime {ort.__version__}, tokenizers {tokenizers.__version__}, numpy {np.__version__}",
            "ort_session_options": {"intra_op_num_threads": so.intra_op_num_threads,
                                    "inter_op_num_threads": so.inter_op_num_threads,
                                    "graph_optimization_level": str(so.graph_optimization_level),
                                    "execution_mode": str(so.execution_mode)},
            "ort_threads_note": "default session options; intra_op_num_threads 0 = ONNX Runtime picks (physical cores)",
            "providers": self.session.get_providers(),
        }

    def band(self, n: int):
        m = self._band.get(n)
        if m is None:
            np = self.np
            m = np.tril(np.triu(np.ones((n, n), dtype=bool)), MAX_ANSWER_LEN - 1)
            self._band[n] = m
        return m

    def answer(self, question: str, context: str) -> dict:
        np = self.np
        enc = self.tokenizer.encode(question, context)
        windows = [enc, *enc.overflowing]
        rows, seq = len(windows), max(len(w.ids) for w in windows)
        ids = np.full((rows, seq), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, seq), dtype=np.int64)
        types = np.zeros((rows, seq), dtype=np.int64)
        context_tok = np.zeros((rows, seq), dtype=bool)
        for r, w in enumerate(windows):
            n = len(w.ids)
            ids[r, :n] = w.ids
            mask[r, :n] = w.attention_mask
            types[r, :n] = w.type_ids
            context_tok[r, :n] = [s == 1 for s in w.sequence_ids]
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        start_logits, end_logits = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})

        keep = context_tok.copy()
        keep[:, 0] = True  # [CLS] stays in the softmax (the "no answer" mass), as in the pipeline
        p_start = softmax(np.where(keep, start_logits, -10000.0), np)
        p_end = softmax(np.where(keep, end_logits, -10000.0), np)
        p_start[:, 0] = 0.0
        p_end[:, 0] = 0.0
        p_start *= context_tok
        p_end *= context_tok
        # scores[r, s, e] = p_start[r, s] * p_end[r, e] on allowed spans, 0 elsewhere
        scores = p_start[:, :, None] * p_end[:, None, :] * self.band(seq)

        per_window = TOP_K * 2 + 10
        flat = scores.reshape(rows, -1)
        if flat.shape[1] > per_window:
            best = np.argpartition(-flat, per_window, axis=1)[:, :per_window]
        else:
            best = np.broadcast_to(np.arange(flat.shape[1]), (rows, flat.shape[1]))
        merged: dict[str, list] = {}  # lower-cased text -> [start, end, score]
        for r, w in enumerate(windows):
            cand = best[r][np.argsort(-flat[r, best[r]])]
            for idx in cand:
                score = float(flat[r, idx])
                if score <= 0.0:
                    break
                s, e = divmod(int(idx), seq)
                span = word_span(w, s, e)
                text = context[span[0]:span[1]]
                hit = merged.get(text.lower())
                if hit is None:
                    merged[text.lower()] = [span[0], span[1], score]
                else:
                    hit[2] += score
        start, end, score = max(merged.values(), key=lambda a: a[2])
        return {"text": context[start:end], "start": start, "end": end, "score": score}


def softmax(x, np):
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def word_span(w, s: int, e: int) -> tuple[int, int]:
    """Character span of tokens s..e widened to whole words of the context (offsets from
    the Python tokenizers binding are character offsets)."""
    ws, we = w.token_to_word(s), w.token_to_word(e)
    if ws is not None and we is not None:
        a, b = w.word_to_chars(ws, 1), w.word_to_chars(we, 1)
        if a is not None and b is not None:
            return a[0], b[1]
    return w.offsets[s][0], w.offsets[e][1]


ROWS = {"pipeline": PipelineRow, "onnx": OnnxRow}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", required=True, choices=sorted(ROWS))
    p.add_argument("--model-dir", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--iters", type=int, required=True)
    args = p.parse_args()

    inputs = json.loads(Path(args.inputs).read_text())
    loaded = time.perf_counter()
    row = ROWS[args.row](args.model_dir)
    load_ms = (time.perf_counter() - loaded) * 1e3
    first = inputs[0]
    emit({"event": "first", "id": first["id"], "answer": row.answer(first["question"], first["context"])})
    if args.iters == 0:
        return

    answers = {item["id"]: row.answer(item["question"], item["context"]) for item in inputs}  # untimed pass
    times: dict[str, list[float]] = {item["id"]: [] for item in inputs}
    for _ in range(args.iters):
        for item in inputs:
            started = time.perf_counter()
            answers[item["id"]] = row.answer(item["question"], item["context"])
            times[item["id"]].append((time.perf_counter() - started) * 1e3)
    info = dict(row.info, python=platform.python_version(), load_ms=round(load_ms, 1),
                process_threads=process_threads(), cpu_count=os.cpu_count())
    emit({"event": "done", "times_ms": times, "answers": answers, "info": info})


if __name__ == "__main__":
    main()
