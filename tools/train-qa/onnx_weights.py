"""Weights of an exported QA model (fp32 or int8 ONNX) as a BertForQuestionAnswering state dict.

Lets training continue from the shipped model (`train.py --init-onnx models/nlp1/model.onnx`),
so a later run builds on earlier CPU time instead of starting from the base encoder. Quantized
weights are dequantized ((q - zero_point) * scale), so the start is the int8 model's function,
and fine-tuning in fp32 moves it back off the int8 grid.

Initializers keep their PyTorch names (`inner.<name>` from export.py's wrapper) except the
MatMul weights, which the exporter names `onnx::MatMul_N` and stores transposed; each of those is
named after the `.bias` that is added to its product further down the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

PREFIX = "inner."


def dequantized(inits: dict[str, np.ndarray], name: str) -> np.ndarray:
    q = inits[name + "_quantized"].astype(np.float32)
    zero = inits[name + "_zero_point"].astype(np.float32)
    scale = inits[name + "_scale"].astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:  # per-channel: one scale per output column
        return (q - zero.reshape(1, -1)) * scale.reshape(1, -1)
    return (q - zero) * scale


def _bias_after(consumers: dict[str, list[onnx.NodeProto]], start: str, biases: set[str]) -> str:
    """The `.bias` initializer added to what flows out of tensor `start` (breadth-first)."""
    frontier, seen = [start], set()
    while frontier:
        tensor = frontier.pop(0)
        for node in consumers.get(tensor, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            hit = [i for i in node.input if i in biases]
            if hit:
                return hit[0]
            frontier += list(node.output)
    raise ValueError(f"no bias follows {start}: not an exported BertForQuestionAnswering graph")


def state_dict_from_onnx(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    biases = {n for n in inits if n.endswith(".bias")}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    state: dict[str, np.ndarray] = {}
    for name, value in inits.items():
        base = name.removesuffix("_quantized")
        if name.endswith(("_scale", "_zero_point")):
            continue
        weight = dequantized(inits, base) if name.endswith("_quantized") else value.astype(np.float32)
        if base.startswith("onnx::MatMul"):
            bias = _bias_after(consumers, name, biases)
            state[bias.removesuffix(".bias").removeprefix(PREFIX) + ".weight"] = weight.T.copy()
        elif base.startswith(PREFIX):
            state[base.removeprefix(PREFIX)] = weight
        else:
            raise ValueError(f"unexpected initializer {name} in {path}")
    return state
