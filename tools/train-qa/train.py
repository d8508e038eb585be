"""Fine-tune a BERT-family encoder for extractive QA on SQuAD v1.1 and export it to ONNX.

Reproducible: fixed seed, deterministic example sample and batch order, every
hyper-parameter written to the output directory. Resumable: a checkpoint is written every
`--checkpoint-every` steps and a rerun with the same arguments continues from it.
Incremental: `--init-onnx` starts from an exported model (the previous stage's fp32 export
when the machine kept it, else the shipped int8 file, dequantized) and `--skip-examples` moves
the sample past the questions that model was trained on, so CPU time spent in one session is
not lost when the next one starts on a fresh machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from export import export  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-model", required=True, type=Path, help="directory with config.json, model.safetensors, tokenizer.json")
    p.add_argument("--train-file", required=True, type=Path, help="SQuAD v1.1 train JSON")
    p.add_argument("--out", required=True, type=Path, help="output directory (checkpoints, export, hparams.json)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--train-examples", type=int, default=26000, help="questions sampled from the train set (CPU budget)")
    p.add_argument(
        "--skip-examples",
        type=int,
        default=0,
        help="skip this many questions of the seeded shuffle first: with --init-onnx, the ones the earlier run already used",
    )
    p.add_argument(
        "--init-onnx",
        type=Path,
        help="start from this exported QA model (fp32 or int8 ONNX, e.g. models/nlp1/model.onnx) instead of the base encoder's fresh head",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint without training further")
    p.add_argument("--weights", type=Path, help="with --export-only: a checkpoint or epochN.pt to export instead of the latest")
    p.add_argument("--export-dir", type=Path, help="with --export-only: where to export (default OUT/export)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile the model (dynamic shapes): about 2x faster steps on CPU after a few minutes of compiling",
    )
    return p.parse_args()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_squad(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    examples = []
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                ans = qa["answers"][0]
                examples.append(
                    {
                        "id": qa["id"],
                        "question": qa["question"].lstrip(),
                        "context": para["context"],
                        "answer_start": ans["answer_start"],
                        "answer_text": ans["text"],
                    }
                )
    return examples


def make_features(examples: list[dict], tokenizer, args) -> list[dict]:
    """Windows of (question, context) with start/end token labels; CLS when the answer is outside."""
    features = []
    batch = 256
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        enc = tokenizer(
            [e["question"] for e in chunk],
            [e["context"] for e in chunk],
            truncation="only_second",
            max_length=args.max_seq_len,
            stride=args.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        for j, offsets in enumerate(enc["offset_mapping"]):
            ex = chunk[enc["overflow_to_sample_mapping"][j]]
            seq_ids = enc.sequence_ids(j)
            start_char = ex["answer_start"]
            end_char = start_char + len(ex["answer_text"])
            ctx_start = seq_ids.index(1)
            ctx_end = len(seq_ids) - 1 - seq_ids[::-1].index(1)
            if offsets[ctx_start][0] > start_char or offsets[ctx_end][1] < end_char:
                s = e = 0
            else:
                s = ctx_start
                while s <= ctx_end and offsets[s][0] <= start_char:
                    s += 1
                s -= 1
                e = ctx_end
                while e >= ctx_start and offsets[e][1] >= end_char:
                    e -= 1
                e += 1
            features.append(
                {
                    "input_ids": enc["input_ids"][j],
                    "token_type_ids": enc["token_type_ids"][j],
                    "start": s,
                    "end": e,
                }
            )
    return features


def batch_order(features: list[dict], args) -> list[list[int]]:
    """Length-grouped batches: shuffle, sort within mega-batches, shuffle the batches.

    Padding each batch only to its longest member is most of the CPU saving.
    """
    rng = random.Random(args.seed)
    order = []
    for epoch in range(args.epochs):
        idx = list(range(len(features)))
        rng.shuffle(idx)
        mega = args.batch_size * 50
        batches = []
        for k in range(0, len(idx), mega):
            group = sorted(idx[k : k + mega], key=lambda n: len(features[n]["input_ids"]))
            batches += [group[b : b + args.batch_size] for b in range(0, len(group), args.batch_size)]
        rng.shuffle(batches)
        order += batches
    return order


def collate(features: list[dict], ids: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(features[i]["input_ids"]) for i in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(ids), width), dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, i in enumerate(ids):
        f = features[i]
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        token_type_ids[row, :n] = torch.tensor(f["token_type_ids"])
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "start_positions": torch.tensor([features[i]["start"] for i in ids]),
        "end_positions": torch.tensor([features[i]["end"] for i in ids]),
    }


def load_onnx_init(model, path: Path) -> None:
    """Loads an exported model's weights; every parameter must come from the file."""
    from onnx_weights import state_dict_from_onnx

    state = {k: torch.from_numpy(v) for k, v in state_dict_from_onnx(path).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    parameters = {name for name, _ in model.named_parameters()}
    missing = [k for k in missing if k in parameters]
    if missing or unexpected:
        raise SystemExit(f"{path} does not match the base model: missing {missing}, unexpected {unexpected}")
    print(f"initialized from {path} ({len(state)} tensors)", flush=True)


def export_with_settings(model, tokenizer, out: Path, hparams: Path) -> None:
    """Exports, then puts the run's settings beside each ONNX model, so a later stage started
    from one (`--init-onnx`) records them under `init_hparams`."""
    export(model, tokenizer, out)
    for variant in out.iterdir():
        if (variant / "model.onnx").exists() and hparams.exists():
            shutil.copy(hparams, variant / "hparams.json")


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    set_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(str(args.base_model))
    config = AutoConfig.from_pretrained(str(args.base_model))
    model = AutoModelForQuestionAnswering.from_pretrained(str(args.base_model), config=config)

    if args.init_onnx:
        load_onnx_init(model, args.init_onnx)

    ckpt_path = args.out / "checkpoint.pt"
    if args.export_only:
        state = torch.load(args.weights or ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("model", state))
        export_with_settings(model, tokenizer, args.export_dir or args.out / "export", args.out / "hparams.json")
        return

    examples = load_squad(args.train_file)
    rng = random.Random(args.seed)
    rng.shuffle(examples)
    examples = examples[args.skip_examples : args.skip_examples + args.train_examples]
    t0 = time.time()
    features = make_features(examples, tokenizer, args)
    print(f"{len(examples)} questions -> {len(features)} windows in {time.time() - t0:.1f}s", flush=True)
    batches = batch_order(features, args)
    total_steps = len(batches)

    hparams = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    hparams.update(
        windows=len(features),
        total_steps=total_steps,
        torch=torch.__version__,
        transformers=__import__("transformers").__version__,
        onnxruntime=__import__("onnxruntime").__version__,
        python=sys.version.split()[0],
    )
    if args.init_onnx:
        # The path is reused as models improve (models/nlp1): the hash says which model it was.
        hparams["init_onnx_sha256"] = hashlib.sha256(args.init_onnx.read_bytes()).hexdigest()
        # The earlier stage's settings travel with the model (run.sh --install ships them beside it).
        earlier = args.init_onnx.parent / "hparams.json"
        if earlier.exists():
            hparams["init_hparams"] = json.loads(earlier.read_text())
    previous = args.out / "hparams.json"
    if ckpt_path.exists() and previous.exists():
        before = json.loads(previous.read_text())
        changed = sorted(k for k in hparams if k not in ("threads", "export_only", "weights", "export_dir", "compile") and before.get(k) != hparams[k])
        if changed:
            raise SystemExit(f"{args.out} holds a checkpoint of a run with other settings ({', '.join(changed)}); "
                             "resume with the same settings or choose another --out (QA_TRAIN_OUT)")
    previous.write_text(json.dumps(hparams, indent=2) + "\n")

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(total_steps * args.warmup_ratio), total_steps)
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}/{total_steps}", flush=True)

    model.train()
    # The compiled module shares the eager module's parameters: checkpoints and the export
    # keep using `model`.
    forward = torch.compile(model, dynamic=True) if args.compile else model
    steps_per_epoch = math.ceil(total_steps / args.epochs)
    started = time.time()
    done_at_start = step
    loss_ema = None
    while step < total_steps:
        batch = collate(features, batches[step], tokenizer.pad_token_id)
        loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 10 == 0 or step == total_steps:
            rate = (step - done_at_start) / (time.time() - started)
            eta = (total_steps - step) / rate / 60
            print(f"step {step}/{total_steps} loss {loss_ema:.3f} lr {scheduler.get_last_lr()[0]:.2e} {rate * args.batch_size:.1f} windows/s eta {eta:.0f} min", flush=True)
        if step % args.checkpoint_every == 0 or step == total_steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step, "torch_rng": torch.get_rng_state()},
                tmp,
            )
            os.replace(tmp, ckpt_path)  # a kill mid-write never leaves a torn checkpoint
        if step % steps_per_epoch == 0 and step < total_steps:
            # Weights at each epoch's end, to evaluate while the next epoch runs.
            torch.save(model.state_dict(), args.out / f"epoch{step // steps_per_epoch}.pt")

    seconds = round(time.time() - started)
    (args.out / "train_seconds.txt").write_text(f"{seconds}\n")
    previous.write_text(json.dumps(dict(hparams, train_seconds=seconds), indent=2) + "\n")
    export_with_settings(model, tokenizer, args.out / "export", previous)


if __name__ == "__main__":
    main()
