"""Ranges of the activations each weight MatMul reads, on windows of SQuAD *train* questions.

    python tools/train-qa/activation_ranges.py --model OUT/export/fp32 --train-file train-v1.1.json \
        [--questions 20]

Dynamic int8 quantization gives each MatMul's input one uint8 range per call, from its
minimum to its maximum. Where a few values are far larger than the rest, that range's step is
coarse for all the others. For every MatMul that reads a weight, this prints the input's range,
the 99.9th percentile of its magnitude, and the uint8 step over the range as a share of that
percentile (the larger, the more that input loses). It explains the sensitivity sweep that
chose `quantize.py`'s `per-channel-ffn-out` (models/README.md): the feed-forward outputs read
the GELU output, which has the largest such share in the first layers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="an fp32 model directory (model.onnx, tokenizer.json, config.json)")
    p.add_argument("--train-file", required=True, type=Path)
    p.add_argument("--questions", type=int, default=20)
    args = p.parse_args()

    from quantize import TrainWindows  # the static variant's calibration windows: the same cut

    model = onnx.load(str(args.model / "model.onnx"))
    weights = {i.name for i in model.graph.initializer}
    inputs = sorted({n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights})
    for name in inputs:  # expose each MatMul input as a graph output
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options)

    windows = TrainWindows(args.model, args.train_file, args.questions, [i.name for i in session.get_inputs()])
    seen: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    for feed in iter(windows.get_next, None):
        for name, value in zip(inputs, session.run(inputs, feed)):
            seen[name].append(value.ravel())

    print(f"{windows.count} windows of {args.questions} train questions, padded to 384 tokens as in a batch")
    print("| MatMul input | min | max | p99.9 of abs | uint8 step / p99.9 |")
    print("|---|---|---|---|---|")
    for name in inputs:
        v = np.concatenate(seen[name])
        lo, hi, p999 = float(v.min()), float(v.max()), float(np.percentile(np.abs(v), 99.9))
        print(f"| {name} | {lo:.2f} | {hi:.2f} | {p999:.2f} | {(hi - lo) / 255 / p999:.4f} |")


if __name__ == "__main__":
    main()
