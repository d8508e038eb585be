"""Does a model give the same logits on every CPU? Run it here and under an emulated older CPU.

    python isa_check.py run --squad fixtures/squad-dev-v1.1-random200.json --out native.npz DIR [DIR ...]
    qemu-x86_64 -cpu Haswell $(which python) isa_check.py run ... --out haswell.npz DIR [DIR ...]
    python isa_check.py compare native.npz haswell.npz

`run` cuts every question of a SQuAD file into windows (384 tokens, stride 128, the question
whole, the context truncated, as the guest does), runs each window alone through ONNX Runtime
(one thread, default optimizations, as the host) and keeps each model's start and end logits and
its best span per window (start <= end < start + 15, both in the context, highest start + end
logit). It records the SIMD extensions the process sees, so a run under
`qemu-x86_64 -cpu Haswell` shows AVX2 without AVX-512, where ONNX Runtime multiplies uint8 by
int8 with VPMADDUBSW (pairs of products summed with int16 saturation), while a CPU with AVX-512
VNNI (VPDPBUSD) or arm64 (SDOT) sums them exactly.

    python isa_check.py trace --squad FILE --out native-trace.npz DIR     (and under qemu, then)
    python isa_check.py compare-trace native-trace.npz haswell-trace.npz

`run` also multiplies each of the model's integer weight matrices alone (a one-node
MatMulInteger graph) by uint8 activations: a row of 255s (the worst case for saturation) and 63
random rows, and keeps the int32 products. `compare` says, per model, how many of those
products are bit for bit the same in both runs, how many windows have the same best span, and
how far apart the logits are. Dynamic quantization rounds activations at run time, so where the
floating-point parts of two CPUs round differently by one ulp, a uint8 code can change and the
logits move by more than fp32 rounding, with the integer arithmetic exact on both. `trace`
keeps, for the first window, every DynamicQuantizeLinear's float input and uint8 codes (graph
optimizations off, so each runs as its own node) and `compare-trace` shows where, layer by
layer, the two CPUs' codes part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

MAX_LEN, STRIDE, MAX_ANSWER = 384, 128, 15


def cpu_features() -> list[str]:
    """The SIMD extensions this process sees (numpy asks CPUID itself, so qemu's -cpu shows)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    wanted = ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512_CLX", "AVX512_ICL", "AVX512_SPR", "ASIMDDP", "ASIMD")
    return [f for f in wanted if __cpu_features__.get(f)]


def windows(tokenizer_file: Path, squad: Path, limit: int | None) -> list[tuple[str, int, dict[str, np.ndarray], np.ndarray]]:
    """(question id, window index, model inputs, context mask) for every window of the first
    `limit` questions (all without it)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_LEN, stride=STRIDE, strategy="only_second")
    out = []
    data = json.loads(squad.read_text(encoding="utf-8"))["data"]
    questions = [(q, p["context"]) for article in data for p in article["paragraphs"] for q in p["qas"]]
    for q, context in questions[:limit]:
        first = tok.encode(q["question"].lstrip(), context)
        for w, enc in enumerate([first, *first.overflowing]):
            feed = {
                "input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
            }
            in_context = np.array([s == 1 for s in enc.sequence_ids])
            out.append((q["id"], w, feed, in_context))
    return out


def integer_products(model_file: Path) -> tuple[list[np.ndarray], int]:
    """Each MatMulInteger weight of the model times the same uint8 activations, alone, and how
    many of those products equal the exact ones (numpy, in int64)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_file))
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    out, exact = [], 0
    for node in (n for n in model.graph.node if n.op_type == "MatMulInteger"):
        weight, zero = inits[node.input[1]], inits[node.input[3]]
        k = weight.dims[0]
        a = np.vstack([np.full((1, k), 255, np.uint8), rng.integers(0, 256, (63, k), dtype=np.uint8)])
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", weight.name, "", zero.name], ["y"])],
            "one",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [64, k])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [64, weight.dims[1]])],
            [numpy_helper.from_array(numpy_helper.to_array(weight), weight.name), numpy_helper.from_array(numpy_helper.to_array(zero), zero.name)],
        )
        one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(one.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        y = session.run(["y"], {"a": a})[0]
        w = numpy_helper.to_array(weight).astype(np.int64) - numpy_helper.to_array(zero).astype(np.int64)
        exact += int(np.array_equal(y, a.astype(np.int64) @ w))
        out.append(y)
    return out, exact


def best_span(start: np.ndarray, end: np.ndarray, context: np.ndarray) -> tuple[int, int]:
    s = np.where(context, start, -np.inf)
    e = np.where(context, end, -np.inf)
    scores = s[:, None] + e[None, :]
    n = len(s)
    i, j = np.indices((n, n))
    scores[(j < i) | (j >= i + MAX_ANSWER)] = -np.inf
    flat = int(np.argmax(scores))
    return flat // n, flat % n


def pipeline_score(start: np.ndarray, end: np.ndarray, context: np.ndarray, span: tuple[int, int]) -> float:
    """The span's score as the transformers pipeline (and the guest) gives it: start and end
    soft-maxed separately over the context and the classifier token, multiplied."""
    keep = context.copy()
    keep[0] = True
    p = [np.exp(x - x[keep].max()) * keep for x in (start.astype(np.float32), end.astype(np.float32))]
    return float(p[0][span[0]] / p[0].sum() * p[1][span[1]] / p[1].sum())


def run(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    results: dict[str, np.ndarray] = {}
    meta = {"cpu_features": cpu_features(), "machine": platform.machine(), "onnxruntime": ort.__version__, "models": []}
    print(f"SIMD seen by this process: {' '.join(meta['cpu_features'])}", flush=True)
    for d in args.models:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(d / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        key = d.name
        meta["models"].append(key)
        spans, scores, starts, ends, ids = [], [], [], [], []
        wins = windows(d / "tokenizer.json", args.squad, args.limit)
        for qid, w, feed, context in wins:
            start, end = session.run(["start_logits", "end_logits"], {k: v for k, v in feed.items() if k in names})
            starts.append(start[0])
            ends.append(end[0])
            spans.append(best_span(start[0], end[0], context))
            scores.append(pipeline_score(start[0], end[0], context, spans[-1]))
            ids.append(feed["input_ids"][0])
        lengths = np.array([len(s) for s in starts])
        results[f"{key}/lengths"] = lengths
        results[f"{key}/start"] = np.concatenate(starts)
        results[f"{key}/end"] = np.concatenate(ends)
        results[f"{key}/spans"] = np.array(spans)
        results[f"{key}/scores"] = np.array(scores)
        results[f"{key}/input_ids"] = np.concatenate(ids)
        results[f"{key}/questions"] = np.array([f"{qid}/{w}" for qid, w, _, _ in wins])
        products, exact = integer_products(d / "model.onnx")
        for i, y in enumerate(products):
            results[f"{key}/int/{i}"] = y
        results[f"{key}/int_count"] = np.array(len(products))
        results[f"{key}/int_exact"] = np.array(exact)
        print(f"{key}: {len(wins)} windows; {exact} of {len(products)} integer MatMuls give the exact products", flush=True)
    np.savez_compressed(args.out, meta=np.array(json.dumps(meta)), **results)


def trace(args: argparse.Namespace) -> None:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(args.model / "model.onnx"))
    quantizers = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    names = [n.input[0] for n in quantizers] + [n.output[0] for n in quantizers]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    _, _, feed, _ = windows(args.model / "tokenizer.json", args.squad, 1)[0]
    inputs = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feed.items() if k in inputs})
    n = len(quantizers)
    print(f"SIMD seen by this process: {' '.join(cpu_features())}; {n} DynamicQuantizeLinear nodes", flush=True)
    np.savez_compressed(args.out, **{f"input/{i}": values[i] for i in range(n)}, **{f"codes/{i}": values[n + i] for i in range(n)})


def compare_trace(args: argparse.Namespace) -> None:
    a, b = np.load(args.a), np.load(args.b)
    n = len([k for k in a.files if k.startswith("codes/")])
    print("DynamicQuantizeLinear | float inputs differing (largest difference) | uint8 codes differing")
    for i in range(n):
        x, y = a[f"input/{i}"], b[f"input/{i}"]
        moved = int(np.count_nonzero(a[f"codes/{i}"] != b[f"codes/{i}"]))
        print(f"{i:>2} | {int(np.count_nonzero(x != y))} of {x.size} ({float(np.abs(x - y).max()):.2e}) | {moved} of {x.size}")


def compare(args: argparse.Namespace) -> None:
    a, b = np.load(args.a), np.load(args.b)
    meta_a, meta_b = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
    print(f"{args.a}: {meta_a['machine']}, SIMD {' '.join(meta_a['cpu_features'])}, onnxruntime {meta_a['onnxruntime']}")
    print(f"{args.b}: {meta_b['machine']}, SIMD {' '.join(meta_b['cpu_features'])}, onnxruntime {meta_b['onnxruntime']}")
    for key in meta_a["models"]:
        if key not in meta_b["models"]:
            continue
        if not np.array_equal(a[f"{key}/input_ids"], b[f"{key}/input_ids"]):
            raise SystemExit(f"{key}: the two runs tokenized differently; compare runs of the same SQuAD file")
        same_span = np.all(a[f"{key}/spans"] == b[f"{key}/spans"], axis=1)
        diff = np.maximum(np.abs(a[f"{key}/start"] - b[f"{key}/start"]), np.abs(a[f"{key}/end"] - b[f"{key}/end"]))
        cuts = np.cumsum(a[f"{key}/lengths"])[:-1]
        per_window = np.array([d.max() for d in np.split(diff, cuts)])
        spread = float(np.abs(np.concatenate([a[f"{key}/start"], a[f"{key}/end"]])).max())
        n = len(same_span)
        if f"{key}/int_count" in a and f"{key}/int_count" in b:
            count = int(a[f"{key}/int_count"])
            exact = sum(np.array_equal(a[f"{key}/int/{i}"], b[f"{key}/int/{i}"]) for i in range(count))
            print(
                f"{key}: integer MatMuls giving the same int32 products in both runs: {exact} of {count} "
                f"(exact, as numpy computes them: {int(a[f'{key}/int_exact'])} here, {int(b[f'{key}/int_exact'])} there)"
            )
        print(
            f"{key}: same best span in {int(same_span.sum())} of {n} windows; logits identical in "
            f"{int((per_window == 0).sum())} of {n}; largest logit difference {diff.max():.6f} "
            f"(logits reach {spread:.1f}); windows differing by more than 0.01: {int((per_window > 0.01).sum())}"
        )
        if f"{key}/scores" in a and f"{key}/scores" in b:
            sa, sb = a[f"{key}/scores"], b[f"{key}/scores"]
            i = int(np.argmax(np.abs(sa - sb)))
            print(f"    best-span scores (the pipeline's): {sa[0]:.4f} here, {sb[0]:.4f} there in the first window; "
                  f"largest difference {abs(sa[i] - sb[i]):.4f} ({a[f'{key}/questions'][i]})")
        for q in a[f"{key}/questions"][~same_span][: args.show]:
            i = list(a[f"{key}/questions"]).index(q)
            print(f"    {q}: span {tuple(a[f'{key}/spans'][i])} here, {tuple(b[f'{key}/spans'][i])} there")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--squad", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--limit", type=int, help="only the first N questions (an emulated CPU is slow)")
    r.add_argument("models", nargs="+", type=Path, help="model directories (model.onnx, tokenizer.json)")
    t = sub.add_parser("trace")
    t.add_argument("--squad", required=True, type=Path)
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("model", type=Path)
    ct = sub.add_parser("compare-trace")
    ct.add_argument("a", type=Path)
    ct.add_argument("b", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--show", type=int, default=5, help="list this many windows whose best span differs")
    args = p.parse_args()
    {"run": run, "compare": compare, "trace": trace, "compare-trace": compare_trace}[args.cmd](args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
