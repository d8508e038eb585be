"""The family matrix: one tiny random-weight extractive-QA model per tokenizer and architecture
family people serve from the Hub, each with the answers the transformers question-answering
pipeline gives on it, for host/tests/families.rs to compare the project's answers with.

For each family this writes `fixtures/families/<family>/` in the layout `qa-host` serves
(`model.onnx`, `tokenizer.json`, `config.json`) and `expected.json`:
  - a tokenizer trained here on the contexts and questions of
    fixtures/squad-dev-v1.1-random200.json with the family's own normalizer, pre-tokenizer,
    model type and post-processor (the structure of the Hub's tokenizer.json for that family);
  - a model with the family's architecture at toy size (hidden 32, 2 layers), random weights
    from a fixed seed, exported by Optimum's standard ONNX exporter (task question-answering);
  - `pipeline`: per question, the top 3 answers (text, start, end, score) of the transformers
    question-answering pipeline on that very model.onnx (Optimum's ORT model class, the
    project's decoding settings), for contexts of one window and of several;
  - `document`: the project's own answers with its default decoding (`qa-host ask`), a
    regression pin (no reference implements that decoding);
  - `pytorch_agrees`: how many of the pipeline's best answers the PyTorch model gives too (a
    check on the export, reported, not required).

    ~/.cache/qa/ref-venv/bin/python tools/families/make.py --qa-host target/debug/qa-host

Needs torch, transformers (4.57), optimum-onnx and tokenizers (the reference environment of
models/README.md "Reproduce"). Deterministic for a given environment: seeds are fixed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"max_seq_len": 384, "doc_stride": 128, "max_answer_len": 15}
TOP_K = 3
VOCAB = 2000
SIZE = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64}
HEAD_SCALE = 50.0


def corpus(squad: dict) -> list[str]:
    texts = []
    for article in squad["data"]:
        for para in article["paragraphs"]:
            texts.append(para["context"])
            texts.extend(q["question"] for q in para["qas"])
    return texts


def questions(squad: dict) -> list[dict]:
    """Six questions: three over their own paragraph (one window each) and three over a
    document of several paragraphs (several windows at max_seq_len 384), the question's
    paragraph in the middle."""
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
    asked = []
    for i in (0, 7, 23):
        para = paragraphs[i]
        asked.append({"id": f"single-{i}", "question": para["qas"][0]["question"], "context": para["context"]})
    for i in (41, 88, 130):
        para = paragraphs[i]
        before, after = paragraphs[i - 3 : i], paragraphs[i + 1 : i + 4]
        document = "\n\n".join(p["context"] for p in [*before, para, *after])
        asked.append({"id": f"document-{i}", "question": para["qas"][0]["question"], "context": document})
    return asked


def train_tokenizer(family: str, texts: list[str]):
    """The family's tokenizer, trained here, with the structure of the Hub's tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if family in ("bert-uncased", "bert-cased", "distilbert"):
        lowercase = family != "bert-cased"
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=special, continuing_subword_prefix="##"))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        return tok, {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}
    if family == "roberta":
        special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(
            texts, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        )
        tok.post_processor = processors.RobertaProcessing(
            sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>")), trim_offsets=True, add_prefix_space=False
        )
        return tok, {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
                     "bos_token": "<s>", "eos_token": "</s>"}
    # SentencePiece families: Unigram with Metaspace.
    if family == "xlm-roberta":
        special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        cls_token, sep_token, pad_token, unk_token, mask_token = "<s>", "</s>", "<pad>", "<unk>", "<mask>"
    else:  # albert, deberta-v3
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        cls_token, sep_token, pad_token, unk_token, mask_token = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
    tok = Tokenizer(models.Unigram())
    norm = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if family == "albert":
        norm += [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()]
    tok.normalizer = normalizers.Sequence(norm)
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # The Hub's XLM-R splits on white space first (its offsets leave the space out); ALBERT's
    # and DeBERTa-v3's converted tokenizers run Metaspace alone.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace]) if family == "xlm-roberta" else metaspace
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=special, unk_token=unk_token))
    cls, sep = tok.token_to_id(cls_token), tok.token_to_id(sep_token)
    if family == "xlm-roberta":
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} {sep_token} $B {sep_token}",
            special_tokens=[(cls_token, cls), (sep_token, sep)],
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
            special_tokens=[(cls_token, cls), (sep_token, sep)],
        )
    return tok, {"cls_token": cls_token, "sep_token": sep_token, "pad_token": pad_token, "unk_token": unk_token, "mask_token": mask_token}


def model_config(family: str, tok, vocab: int):
    import transformers as t

    h, n, heads, ff = SIZE["hidden"], SIZE["layers"], SIZE["heads"], SIZE["intermediate"]
    pad = tok.token_to_id({"roberta": "<pad>", "xlm-roberta": "<pad>"}.get(family, "[PAD]"))
    common = dict(vocab_size=vocab, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, intermediate_size=ff, pad_token_id=pad)
    if family in ("bert-uncased", "bert-cased"):
        return t.BertConfig(**common, max_position_embeddings=512, type_vocab_size=2)
    if family == "distilbert":
        return t.DistilBertConfig(vocab_size=vocab, dim=h, n_layers=n, n_heads=heads, hidden_dim=ff, max_position_embeddings=512, pad_token_id=pad)
    if family == "roberta":
        return t.RobertaConfig(**common, max_position_embeddings=514, type_vocab_size=1,
                               bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"))
    if family == "xlm-roberta":
        return t.XLMRobertaConfig(**common, max_position_embeddings=514, type_vocab_size=1,
                                  bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"))
    if family == "albert":
        return t.AlbertConfig(**common, embedding_size=16, max_position_embeddings=512, type_vocab_size=2)
    if family == "deberta-v3":
        return t.DebertaV2Config(**common, max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                                 position_buckets=64, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", max_relative_positions=-1)
    raise ValueError(family)


FAMILIES = ("bert-uncased", "bert-cased", "distilbert", "roberta", "xlm-roberta", "albert", "deberta-v3")


def make(family: str, texts: list[str], asked: list[dict], out: Path, qa_host: Path) -> dict:
    import numpy as np
    import torch
    import transformers
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForQuestionAnswering
    from transformers import AutoModelForQuestionAnswering, PreTrainedTokenizerFast, pipeline

    tok, specials = train_tokenizer(family, texts)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    torch.manual_seed(int(hashlib.sha256(family.encode()).hexdigest()[:8], 16))
    config = model_config(family, tok, tok.get_vocab_size())
    # The inputs the family's tokenizer hands its model, as the Hub's tokenizer_config.json says:
    # token type ids only where the model has type embeddings.
    if getattr(config, "type_vocab_size", 0) < 2:
        fast.model_input_names = ["input_ids", "attention_mask"]
    model = AutoModelForQuestionAnswering.from_config(config).eval()
    # A random toy model's start and end logits are nearly flat (many spans within rounding of
    # each other); a steeper QA head spreads them far apart, so that the order of its answers
    # does not depend on the runtime's rounding.
    with torch.no_grad():
        model.qa_outputs.weight.mul_(HEAD_SCALE)

    dest = out / family
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        saved, exported = Path(tmp) / "torch", Path(tmp) / "onnx"
        model.save_pretrained(saved)
        fast.save_pretrained(saved)
        main_export(str(saved), output=str(exported), task="question-answering", opset=17, do_validation=False)
        shutil.copy(exported / "model.onnx", dest / "model.onnx")
        shutil.copy(saved / "config.json", dest / "config.json")
    tok.save(str(dest / "tokenizer.json"))

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("model.onnx", "config.json"):
            shutil.copy(dest / name, Path(tmp) / name)
        ort_model = ORTModelForQuestionAnswering.from_pretrained(tmp, file_name="model.onnx")
    qa = pipeline("question-answering", model=ort_model, tokenizer=fast)
    on_torch = pipeline("question-answering", model=model, tokenizer=fast)
    expected = {"family": family, "pipeline": {}, "document": {}}
    agree = 0
    for q in asked:
        out_ = qa(question=q["question"], context=q["context"], top_k=TOP_K, **SETTINGS)
        expected["pipeline"][q["id"]] = [
            {"text": a["answer"], "start": a["start"], "end": a["end"], "score": float(np.float32(a["score"]))} for a in out_
        ]
        torch_best = on_torch(question=q["question"], context=q["context"], top_k=1, **SETTINGS)
        agree += int((torch_best["start"], torch_best["end"]) == (out_[0]["start"], out_[0]["end"]))
        # The project's own answers with its default decoding, through the real host and guest.
        request = {"question": q["question"], "context": q["context"], "model_type": family, "top_k": TOP_K}
        with tempfile.TemporaryDirectory() as empty:
            env = dict(os.environ, QA_MODELS=f"{family}=image:{dest}", QA_MODELS_DIR=empty)
            request_file = Path(empty) / "request.json"
            request_file.write_text(json.dumps(request), encoding="utf-8")
            reply = subprocess.run([str(qa_host), "ask", "--request", str(request_file)], env=env, capture_output=True, text=True, check=False)
        if reply.returncode != 0:
            sys.exit(f"{family}: qa-host ask failed: {reply.stderr}")
        answered = json.loads(reply.stdout)
        expected["document"][q["id"]] = [
            {"text": a["text"], "start": a["start"], "end": a["end"], "score": a["score"]} for a in answered["answers"]
        ]
    expected["pytorch_agrees"] = f"{agree} of {len(asked)} best answers"
    expected["made_by"] = "tools/families/make.py"
    expected["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
    expected["model_sha256"] = hashlib.sha256((dest / "model.onnx").read_bytes()).hexdigest()
    (dest / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    size = (dest / "model.onnx").stat().st_size
    print(f"{family}: {size / 1e3:.0f} KB, PyTorch agrees on {agree} of {len(asked)}", file=sys.stderr)
    return expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", type=Path, default=ROOT / "fixtures/squad-dev-v1.1-random200.json")
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures/families")
    ap.add_argument("--qa-host", type=Path, default=ROOT / "target/debug/qa-host")
    ap.add_argument("families", nargs="*", default=list(FAMILIES))
    args = ap.parse_args()
    squad = json.loads(args.squad.read_text(encoding="utf-8"))
    texts, asked = corpus(squad), questions(squad)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "questions.json").write_text(json.dumps(asked, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for family in args.families:
        make(family, texts, asked, args.out, args.qa_host)


if __name__ == "__main__":
    main()
