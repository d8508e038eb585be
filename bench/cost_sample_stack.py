"""The original sample's stack for bench/cost.py: the transformers question-answering pipeline
on PyTorch, CPU, one thread, with a DistilBERT-base model (`DistilBertConfig()` defaults: 6
layers, hidden 768, 66 M parameters), the size and shape of the sample's
distilbert-base-cased-distilled-squad. Its weights are random (the hub is not reachable
here): latency and memory do not depend on weight values, answers do, so only timings and
memory are read from this. Prints one JSON line: seconds from interpreter start to the first
answer, warm medians, peak RSS.

    python bench/cost_sample_stack.py --tokenizer models/nlp1/tokenizer.json --context-file doc.json
"""

import time

STARTED = time.monotonic()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--inputs", required=True, help="JSON: {question, context, questions, batch_context}")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    import torch
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering, PreTrainedTokenizerFast, pipeline

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DistilBertForQuestionAnswering(DistilBertConfig()).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer, model_max_length=512, pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]",
                                        model_input_names=["input_ids", "attention_mask"])
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    inputs = json.loads(open(args.inputs).read())
    qa(question=inputs["question"], context=inputs["context"])
    cold = time.monotonic() - STARTED

    def timed(f):
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1e3

    questions = inputs["questions"]
    single = [timed(lambda: qa(question=questions[i % len(questions)], context=inputs["batch_context"])) for i in range(args.runs)]
    # The pipeline takes a list of questions and answers them one after another.
    batch = [timed(lambda: qa(question=inputs["questions"], context=inputs["batch_context"])) for _ in range(max(3, args.runs // 3))]
    print(json.dumps({
        "cold_s": cold,
        "single_ms": statistics.median(single),
        "batch8_ms": statistics.median(batch),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runtime": f"torch {torch.__version__}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters",
    }))


if __name__ == "__main__":
    main()
