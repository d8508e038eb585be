"""Turn a dynamically quantized QA model (what quantize.py writes) back into an fp32 graph.

    python tools/train-qa/dequantize.py --model models/nlp1 --out OUT/dequantized [--verify]

For when the fp32 export a shipped file was made from is gone and the file must be quantized
again another way: each weight becomes (q - zero_point) * scale, the very numbers the int8 graph
multiplies by, so the fp32 graph computes what the int8 one does without rounding activations.

  DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, xz, Wz) -> Cast -> Mul(xs * Ws)
      becomes MatMul(x, W)
  Gather(Tq, ids) -> DequantizeLinear(., Ts, Tz)        (the embedding tables)
      becomes Gather(T, ids)

Tensor names are kept (a weight `W_quantized` becomes `W`), so quantizing the result with the
recipe the input was made with gives the input's integers back. `--verify` does that with
quantize.py's `per-channel-ffn-out` (stage 9's recipe) and compares every initializer.
The output directory is in the layout qa-host serves (model.onnx, tokenizer.json, config.json).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_weights import dequantized

SUFFIX = "_quantized"


def _maps(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _only_consumer(consumers: dict[str, list[onnx.NodeProto]], tensor: str, op_type: str) -> onnx.NodeProto:
    users = consumers.get(tensor, [])
    if len(users) != 1 or users[0].op_type != op_type:
        raise SystemExit(f"{tensor} feeds {[u.op_type for u in users]}, not one {op_type}: not a quantize_dynamic graph")
    return users[0]


def dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer, consumers = _maps(graph)
    replaced: dict[int, onnx.NodeProto] = {}  # id(old node) -> its fp32 replacement
    superseded: set[int] = set()  # the old nodes that wrote what a replacement now writes
    new_weights: dict[str, np.ndarray] = {}

    for node in graph.node:
        if node.op_type == "MatMulInteger":
            xq, wq = node.input[0], node.input[1]
            dql = producer.get(xq)
            if dql is None or dql.op_type != "DynamicQuantizeLinear" or wq not in inits:
                raise SystemExit(f"{node.name}: inputs are not DynamicQuantizeLinear output and a weight initializer")
            cast = _only_consumer(consumers, node.output[0], "Cast")
            mul = _only_consumer(consumers, cast.output[0], "Mul")
            weight = wq.removesuffix(SUFFIX)
            new_weights[weight] = dequantized(inits, weight)
            superseded.add(id(mul))
            replaced[id(node)] = helper.make_node("MatMul", [dql.input[0], weight], [mul.output[0]], name=node.name.removesuffix("_quant"))
        elif node.op_type == "Gather" and node.input[0].endswith(SUFFIX) and node.input[0] in inits:
            dq = _only_consumer(consumers, node.output[0], "DequantizeLinear")
            if inits[dq.input[1]].size != 1:
                raise SystemExit(f"{node.name}: the table has more than one scale; only per-tensor Gathers are handled")
            table = node.input[0].removesuffix(SUFFIX)
            superseded.add(id(dq))
            new_weights[table] = dequantized(inits, table)
            replaced[id(node)] = helper.make_node("Gather", [table, node.input[1]], [dq.output[0]], name=node.name, **{
                a.name: helper.get_attribute_value(a) for a in node.attribute
            })

    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in superseded]
    # What fed only the integer path (DynamicQuantizeLinear, Cast, the scale Muls, the
    # DequantizeLinears) is now unread; drop it, last consumer first.
    wanted = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for n in reversed(nodes):
        if any(o in wanted for o in n.output):
            keep.append(n)
            wanted.update(i for i in n.input if i)
    keep.reverse()

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    del out.graph.initializer[:]
    for name, value in inits.items():
        if name in wanted and name not in new_weights:
            out.graph.initializer.append(numpy_helper.from_array(value, name))
    for name, value in new_weights.items():
        out.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    kept_values = [v for v in out.graph.value_info if v.name in wanted]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept_values)
    out.producer_name, out.producer_version = "tools/train-qa/dequantize.py", "1"
    left = sorted({n.op_type for n in keep} & {"MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear", "QuantizeLinear"})
    if left:
        raise SystemExit(f"integer operators left after dequantizing: {left}")
    onnx.checker.check_model(out)
    return out


def verify(model_dir: Path, fp32_dir: Path) -> None:
    """Quantize the fp32 graph again with stage 9's recipe; every initializer must come back."""
    from quantize import quantize

    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / "model.onnx"
        quantize("per-channel-ffn-out", fp32_dir, again)
        a = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model_dir / "model.onnx")).graph.initializer}
        b = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(again)).graph.initializer}
    if set(a) != set(b):
        raise SystemExit(f"initializers differ by name: only in the original {sorted(set(a) - set(b))[:5]}, only requantized {sorted(set(b) - set(a))[:5]}")
    worst, differing = 0.0, []
    for name, x in a.items():
        y = b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            differing.append(name)
        elif np.issubdtype(x.dtype, np.integer):
            if not np.array_equal(x, y):
                differing.append(f"{name} ({int(np.count_nonzero(x != y))} of {x.size} differ)")
        else:
            scale = np.maximum(np.abs(x), np.finfo(np.float32).tiny)
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y) / scale)) if x.size else 0.0)
    if differing:
        raise SystemExit(f"requantized initializers differ: {differing[:10]}")
    print(f"verify: all {len(a)} initializers of {model_dir / 'model.onnx'} come back from quantizing {fp32_dir}: "
          f"integers equal, floats within a relative {worst:.2e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a quantized model directory (model.onnx, tokenizer.json, config.json)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--verify", action="store_true", help="requantize with per-channel-ffn-out and compare with --model")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = dequantize(onnx.load(str(args.model / "model.onnx")))
    onnx.save(fp32, str(args.out / "model.onnx"))
    for name in ("tokenizer.json", "config.json", "hparams.json"):
        if (args.model / name).exists():
            shutil.copy(args.model / name, args.out / name)
    ops = sorted({n.op_type for n in fp32.graph.node})
    print(f"{args.out / 'model.onnx'}: {(args.out / 'model.onnx').stat().st_size / 1e6:.1f} MB, operators {ops}", flush=True)
    if args.verify:
        verify(args.model, args.out)


if __name__ == "__main__":
    main()
