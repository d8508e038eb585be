"""Make a model directory whose graph takes its int64 inputs as float32.

The stock wasmtime CLI's ONNX backend accepts only f32 input tensors (an int64 tensor stops
the process). This tool rewrites each int64 graph input to float32 followed by a Cast back to
int64 inside the graph, so the same weights run under `wasmtime run`; config.json gets
`"qa_input_dtype": "float32"`, which tells the guest to send f32 ids (exact below 2^24).

    python tools/train-qa/f32_inputs.py models/nlp1 .cache/wasmtime-models/nlp1
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def convert(src: Path, dst: Path) -> list[str]:
    model = onnx.load(str(src / "model.onnx"))
    graph = model.graph
    changed = []
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type != TensorProto.INT64:
            continue
        name = graph_input.name
        cast = f"{name}__as_int64"
        for node in graph.node:
            node.input[:] = [cast if x == name else x for x in node.input]
        graph_input.type.tensor_type.elem_type = TensorProto.FLOAT
        graph.node.insert(0, helper.make_node("Cast", [name], [cast], to=TensorProto.INT64, name=f"{name}__cast"))
        changed.append(name)
    onnx.checker.check_model(model)
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / "model.onnx.partial"
    onnx.save(model, str(tmp))
    tmp.replace(dst / "model.onnx")
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    config = json.loads((src / "config.json").read_text())
    config["qa_input_dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return changed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = p.parse_args()
    print(f"float32 inputs: {', '.join(convert(args.src, args.dst))} -> {args.dst}")


if __name__ == "__main__":
    main()
