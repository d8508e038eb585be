"""Quantize an exported fp32 QA model several ways, to compare accuracy, speed and size.

    python tools/train-qa/quantize.py --fp32 OUT/export/fp32 --out OUT/quant \
        [--train-file train-v1.1.json] [variant ...]

Each variant is written to OUT/quant/<variant>/ in the layout qa-host serves (model.onnx,
tokenizer.json, config.json), so `qa-host eval` measures it through the real host and guest:

    QA_MODELS="v=image:OUT/quant/per-channel" qa-host eval --model v dev-v1.1.json

Variants (all weights int8, symmetric):
  dynamic             what export.py wrote before: one scale per weight tensor, activations
                      quantized at run time with ranges taken over the batch
  per-channel         one scale per output column of every weight matrix (what export.py
                      wrote from 2026-12-04 to 2026-12-06)
  per-channel-head    per-channel, with the QA head and the last encoder layer left in fp32
  per-channel-ffn-out per-channel, with each layer's feed-forward output projection left in
                      fp32 (stage 9's recipe, shipped 2026-12-06 to 2026-12-07). That MatMul reads the
                      GELU output, whose rare large values (up to 24 in layer 0, where 99.9 %
                      are under 3.1, on SQuAD train windows: activation_ranges.py) stretch the
                      one uint8 range per tensor that dynamic quantization gives activations
  per-channel-ffn-out-7bit
                      per-channel-ffn-out with 7-bit weights (quantize_dynamic's reduce_range:
                      int8 in [-64, 64]; SHIPPED below). ONNX Runtime multiplies uint8
                      activations by int8 weights with VPMADDUBSW on AVX2 (and AVX-512 without
                      VNNI), which saturates the sum of each pair of products at 32767: with
                      8-bit weights (255 * 127 * 2 = 64770) the same file gives other logits
                      there than on AVX-512 VNNI or arm64, where the products are summed
                      exactly. With 7-bit weights a pair is at most 255 * 64 * 2 = 32640, so
                      every CPU computes the same integers (isa_check.py)
  per-channel-ffn-out-u8
                      per-channel-ffn-out with uint8 weights (asymmetric, zero point per
                      column): ONNX Runtime's u8u8 kernels widen to 16 bits before
                      multiplying, so they are exact on every CPU too; measured beside -7bit
  per-channel-words   per-channel, with the word-embedding table left in fp32 (over 40 MB: measured
                      only, to see what the table's quantization costs)
  static              QDQ: weights per channel, activations with fixed ranges calibrated on
                      windows of SQuAD *train* questions (never dev), MatMuls only
  fused               ONNX Runtime's BERT fusions (attention, layer norm, GELU) first, then
                      `per-channel` dynamic quantization
  blockwise           MatMuls as MatMulNBits with 8-bit weights in blocks of 32 rows and
                      accuracy level 4 (activations quantized per block of 32 at run time,
                      not per tensor); the word-embedding Gather `per-channel` as above
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

VARIANTS = (
    "dynamic",
    "per-channel",
    "per-channel-head",
    "per-channel-ffn-out",
    "per-channel-ffn-out-7bit",
    "per-channel-ffn-out-u8",
    "per-channel-words",
    "static",
    "fused",
    "blockwise",
)


def matmul_nodes(model: onnx.ModelProto, needle: str) -> list[str]:
    """MatMul nodes whose name or weight input mentions `needle` (torch export keeps module paths)."""
    out = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and (needle in node.name or any(needle in i for i in node.input)):
            out.append(node.name)
    return out


def head_and_last_layer(model: onnx.ModelProto, config: dict) -> list[str]:
    last = config["num_hidden_layers"] - 1
    nodes = matmul_nodes(model, "qa_outputs") + matmul_nodes(model, f"layer.{last}/")
    if not nodes:
        raise SystemExit("found no QA-head or last-layer MatMul by name; the export's node names changed")
    # The head's MatMul is named after the weight it reads in some exports, not the module.
    return sorted(set(nodes))


def feed_forward_outputs(model: onnx.ModelProto, config: dict) -> list[str]:
    """Each encoder layer's feed-forward output MatMul: the one whose weight has the
    intermediate size as its inner dimension (by shape, since node names differ between
    architectures: BERT's `output.dense`, DistilBERT's `ffn.lin2`)."""
    inner = config.get("intermediate_size", config.get("hidden_dim"))  # BERT, MiniLM / DistilBERT
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    nodes = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and len(dims.get(n.input[1], [])) == 2 and dims[n.input[1]][0] == inner
    ]
    if inner is None or len(nodes) != layers:
        raise SystemExit(f"found {len(nodes)} MatMuls reading {inner}-wide activations, not one per layer ({layers})")
    return nodes


def word_embedding_gather(model: onnx.ModelProto) -> list[str]:
    for node in model.graph.node:
        if node.op_type == "Gather" and any("word_embeddings" in i for i in node.input):
            return [node.name]
    raise SystemExit("found no Gather reading word_embeddings")


class TrainWindows(CalibrationDataReader):
    """Windows of random SQuAD train questions, cut the way the guest cuts them (384 tokens, stride 128)."""

    def __init__(self, model_dir: Path, train_file: Path, questions: int, input_names: list[str], seed: int = 7):
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
        pad_id = json.loads((model_dir / "config.json").read_text()).get("pad_token_id", 0)
        data = json.loads(train_file.read_text(encoding="utf-8"))["data"]
        pairs = [(qa["question"].lstrip(), p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
        random.Random(seed).shuffle(pairs)
        feeds = []
        for q, c in pairs[:questions]:
            enc = tok(q, c, truncation="only_second", max_length=384, stride=128, return_overflowing_tokens=True)
            for j in range(len(enc["input_ids"])):
                # Padded to one length: the histogram calibrators stack every batch's values.
                n = len(enc["input_ids"][j])
                ids = np.full((1, 384), pad_id, dtype=np.int64)
                ids[0, :n] = enc["input_ids"][j]
                mask = np.zeros((1, 384), dtype=np.int64)
                mask[0, :n] = 1
                feed = {"input_ids": ids, "attention_mask": mask}
                if "token_type_ids" in input_names:
                    types = np.zeros((1, 384), dtype=np.int64)
                    types[0, :n] = enc["token_type_ids"][j]
                    feed["token_type_ids"] = types
                feeds.append(feed)
        self.feeds = iter(feeds)
        self.count = len(feeds)

    def get_next(self):
        return next(self.feeds, None)


def fuse(src: Path, dst: Path, config: dict) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        str(src),
        model_type="bert",
        num_heads=config["num_attention_heads"],
        hidden_size=config["hidden_size"],
        opt_level=1,
        use_gpu=False,
    )
    print(f"fused: {opt.get_fused_operator_statistics()}", flush=True)
    opt.save_model_to_file(str(dst))


# The variant export.py writes to <out>/int8 and run.sh --install ships: stage 9's recipe
# (per-channel-ffn-out: 0.36 F1 under fp32 on the full dev set where per-channel was 0.72 under
# it, for 10.6 MB more, 33.6 MB, and 1.18x per-channel's latency) with 7-bit weights, so that
# its integer products are exact on every CPU; on a 2,000-question dev sample 0.16 F1 under
# 8-bit weights and level with uint8 weights, which were about 1.5x slower a question
# (models/README.md, "Quantization").
SHIPPED = "per-channel-ffn-out-7bit"


def quantize(variant: str, fp32: Path, target: Path, train_file: Path | None = None, calibration_questions: int = 100) -> None:
    """Writes `fp32/model.onnx` quantized as `variant` to `target` (a model.onnx path)."""
    model = onnx.load(str(fp32 / "model.onnx"))
    config = json.loads((fp32 / "config.json").read_text())
    src = str(fp32 / "model.onnx")
    weights = dict(weight_type=QuantType.QInt8)
    if variant == "dynamic":
        quantize_dynamic(src, str(target), **weights)
    elif variant == "per-channel":
        quantize_dynamic(src, str(target), per_channel=True, **weights)
    elif variant == "per-channel-head":
        keep = head_and_last_layer(model, config)
        print(f"per-channel-head keeps in fp32: {keep}", flush=True)
        quantize_dynamic(src, str(target), per_channel=True, nodes_to_exclude=keep, **weights)
    elif variant == "per-channel-ffn-out":
        quantize_dynamic(src, str(target), per_channel=True, nodes_to_exclude=feed_forward_outputs(model, config), **weights)
    elif variant == "per-channel-ffn-out-7bit":
        # reduce_range narrows only the MatMul weights; the embedding Gathers stay 8-bit (exact
        # on every CPU: they are only dequantized, never multiplied as integers).
        keep = feed_forward_outputs(model, config)
        quantize_dynamic(src, str(target), per_channel=True, reduce_range=True, nodes_to_exclude=keep, **weights)
    elif variant == "per-channel-ffn-out-u8":
        keep = feed_forward_outputs(model, config)
        quantize_dynamic(src, str(target), per_channel=True, nodes_to_exclude=keep, weight_type=QuantType.QUInt8)
    elif variant == "per-channel-words":
        quantize_dynamic(src, str(target), per_channel=True, nodes_to_exclude=word_embedding_gather(model), **weights)
    elif variant == "static":
        if train_file is None:
            raise SystemExit("the static variant needs --train-file (calibration windows come from SQuAD train)")
        names = [i.name for i in model.graph.input]
        reader = TrainWindows(fp32, train_file, calibration_questions, names)
        print(f"static: calibrating on {reader.count} windows of {calibration_questions} train questions", flush=True)
        quantize_static(
            src,
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.999, "WeightSymmetric": True, "ActivationSymmetric": False},
        )
    elif variant == "fused":
        fused = target.with_name("fused-fp32.onnx")
        fuse(fp32 / "model.onnx", fused, config)
        # Fused contrib ops have no type inference; their outputs are float.
        quantize_dynamic(
            str(fused), str(target), per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **weights
        )
        fused.unlink()
    elif variant == "blockwise":
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        # Per-tensor activation ranges are what dynamic quantization loses accuracy on; MatMulNBits
        # at accuracy level 4 quantizes activations per block of 32 along the inner dimension.
        config8 = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True, accuracy_level=4, algo_config=config8)
        quantizer.process()
        blocked = target.with_name("blockwise-matmuls.onnx")
        quantizer.model.save_model_to_file(str(blocked), use_external_data_format=False)
        # Only the embedding Gather is left in fp32 (47 MB); it goes per-channel int8.
        quantize_dynamic(str(blocked), str(target), per_channel=True, op_types_to_quantize=["Gather"], **weights)
        blocked.unlink()
    else:
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def build(variant: str, fp32: Path, out: Path, train_file: Path | None, calibration_questions: int) -> None:
    """OUT/<variant>/ in the layout qa-host serves, published whole or not at all."""
    dst = out / variant
    tmp = out / f".{variant}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.time()
    quantize(variant, fp32, tmp / "model.onnx", train_file, calibration_questions)
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(fp32 / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)  # a failed variant never leaves a half-written directory under its name
    size = (dst / "model.onnx").stat().st_size
    print(f"{variant}: {size / 1e6:.1f} MB in {time.time() - started:.0f} s -> {dst}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", required=True, type=Path, help="an export's fp32 directory (model.onnx, tokenizer.json, config.json)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train-file", type=Path, help="SQuAD v1.1 train JSON, for the static variant's calibration")
    # 200 questions (about 230 padded windows) needed over 22 GB while calibrating: killed here.
    p.add_argument("--calibration-questions", type=int, default=100)
    p.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = p.parse_args()
    for v in args.variants:
        build(v, args.fp32, args.out, args.train_file, args.calibration_questions)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
