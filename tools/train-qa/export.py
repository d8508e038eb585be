"""Export a Hugging Face extractive-QA model to the layout qa-host serves.

    <out>/fp32/{model.onnx, tokenizer.json, config.json}   ONNX, int64 inputs, dynamic batch/sequence
    <out>/int8/{...}                                        the same, int8 (quantize.SHIPPED: 7-bit per channel, feed-forward outputs fp32)
    <out>/hf/                                               the PyTorch weights (for parity checks)

Inputs are `input_ids`, `attention_mask` and, when the model has token types
(`type_vocab_size >= 2`), `token_type_ids`; outputs `start_logits`, `end_logits`.
`tokenizer.json` has padding and truncation switched off (the guest windows the context).

Bring your own model (for example the AWS sample's nlp2, distilbert-base-cased-distilled-squad,
downloaded where the Hugging Face Hub is reachable):

    python tools/train-qa/export.py --model distilbert-base-cased-distilled-squad --out /tmp/nlp2
    mkdir -p models/nlp2 && cp /tmp/nlp2/int8/* models/nlp2/
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def export(model, tokenizer, out: Path) -> None:
    import torch
    from quantize import SHIPPED, quantize

    fp32, int8, hf = out / "fp32", out / "int8", out / "hf"
    for d in (fp32, int8, hf):
        d.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(str(hf))
    tokenizer.save_pretrained(str(hf))

    with_types = getattr(model.config, "type_vocab_size", 0) >= 2
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    dummy = tokenizer("What is this?", "This is a test.", return_tensors="pt")
    axes = {0: "batch", 1: "sequence"}

    class Wrapped(torch.nn.Module):
        """Positional inputs in `names` order, two outputs."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            result = self.inner(**dict(zip(names, tensors)))
            return result.start_logits, result.end_logits

    torch.onnx.export(
        Wrapped(model),
        tuple(dummy[n] for n in names),
        str(fp32 / "model.onnx"),
        input_names=names,
        output_names=["start_logits", "end_logits"],
        dynamic_axes={n: axes for n in names + ["start_logits", "end_logits"]},
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )
    tok = json.loads(tokenizer.backend_tokenizer.to_str())
    tok["padding"] = None
    tok["truncation"] = None
    for d in (fp32, int8):
        (d / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
        model.config.to_json_file(str(d / "config.json"))
    quantize(SHIPPED, fp32, int8 / "model.onnx")
    print(f"exported {fp32}, {int8} and {hf}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a local directory or a Hugging Face Hub name")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model)
    export(model, tokenizer, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
