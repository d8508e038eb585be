"""Fetch + load time of the same model from each source: image, EFS (a local directory here),
S3 cold (download into an empty cache) and S3 warm (cache already filled by an earlier
process). Each row is a fresh `qa-host serve` whose first request pays for making the model
ready; `fetch` is that phase of the first request (`timings_ms.fetch`), `first` the whole
first request. Prints a markdown table of medians over --runs runs.

    source scripts/env.sh && python3 bench/storage.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models/nlp1"
FILES = ("model.onnx", "tokenizer.json", "config.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_host(env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([str(ROOT / "target/debug/qa-host"), "serve", "--addr", "127.0.0.1:0"],
                            env=dict(os.environ, **env), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("qa-host: listening on "):
            return proc, line.split("listening on ", 1)[1].strip()
    raise SystemExit("qa-host exited before listening")


def first_request(base: str, model: str) -> tuple[float, float]:
    body = json.loads((ROOT / "fixtures/benz.json").read_text())
    body["model_type"] = model
    started = time.perf_counter()
    req = urllib.request.Request(base + "/", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        answer = json.loads(resp.read())
    return answer["timings_ms"]["fetch"], (time.perf_counter() - started) * 1e3


def measure(env: dict, model: str) -> tuple[float, float]:
    proc, base = start_host(env)
    try:
        return first_request(base, model)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--moto", default=str(ROOT / ".cache/tools-venv/bin/moto_server"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp())
    efs = work / "efs/nlp1"
    efs.mkdir(parents=True)
    for f in FILES:
        shutil.copy(MODEL / f, efs / f)
    port = free_port()
    moto = subprocess.Popen([args.moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        time.sleep(2)
        import boto3  # from the same tools environment as moto

        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="models")
        for f in FILES:
            s3.upload_file(str(MODEL / f), "models", f"nlp1/{f}")
        rows = {"image": [], "efs": [], "s3 cold": [], "s3 warm": []}
        for _ in range(args.runs):
            rows["image"].append(measure({}, "nlp1"))
            rows["efs"].append(measure({"QA_MODELS": f"efsnlp=efs:{efs}"}, "efsnlp"))
            cache = work / "s3-cache"
            shutil.rmtree(cache, ignore_errors=True)
            s3env = dict(aws, QA_MODELS="s3nlp=s3://models/nlp1/", QA_MODEL_CACHE_DIR=str(cache))
            rows["s3 cold"].append(measure(s3env, "s3nlp"))
            rows["s3 warm"].append(measure(s3env, "s3nlp"))
    finally:
        moto.kill()
        shutil.rmtree(work, ignore_errors=True)
    size = sum((MODEL / f).stat().st_size for f in FILES) / 2**20
    print(f"model files: {size:.1f} MiB; medians of {args.runs} runs\n")
    print("| source | fetch + load (ms) | first request (ms) |")
    print("|---|---|---|")
    for name, runs in rows.items():
        print(f"| {name} | {statistics.median(r[0] for r in runs):.0f} | {statistics.median(r[1] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
