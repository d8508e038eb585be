"""Cold start by storage: how long a fresh `qa-host serve` takes to make a model ready and answer
its first request, for the shipped model and a larger one (about 250 MB, the size of the
original sample's DistilBERT in fp32), kept in each place a deployment can keep it:

- image: a directory in `QA_MODELS_DIR`, as the container image ships it;
- efs: an `efs:` directory (a local directory here: no NFS latency);
- s3 cold: downloaded from S3 (moto on loopback: no network latency) into an empty cache, for
  every pair of ranged-download part size (`QA_S3_PART_MB`) and parts in flight
  (`QA_S3_CONCURRENCY`) asked for;
- s3 warm: a new process finding the cache an earlier one filled (default part settings).

`fetch + load` is the first request's phase that makes the model ready (`timings_ms.fetch`:
download and verification for S3, ONNX Runtime's load for all), `first request` the whole
first request from the client. Each cell is the median of --runs fresh processes; sources and
settings are interleaved within each run. The files of image and efs were just written, so
they are read from the page cache (a Lambda container image or EFS reads over the network on
a cold start); moto keeps objects on local disk. Read the S3 rows against each other (part size
and concurrency), and each against image and efs for the cost of a download at all.

The larger model is the shipped one with an unused float32 initializer added: a fetch moves
and verifies the bytes such a model has and ONNX Runtime parses them (then drops the
initializer); inference is the shipped model's. Objects go to S3 as `aws s3 cp` puts them:
above 8 MiB in 8 MiB parts with the whole object's CRC64NVME (which the host checks over the
assembled file), single-part with a CRC64NVME below. This needs the tools environment (boto3,
awscrt for CRC64NVME, onnx, numpy: `scripts/test.sh` installs it):

    source scripts/env.sh
    .cache/tools-venv/bin/python bench/storage.py --runs 3
    .cache/tools-venv/bin/python bench/storage.py --smoke     # one run, small sizes: the harness only

Prints a markdown table, the load average before and after, and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import free_port, start_host

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models/nlp1"
FILES = ("model.onnx", "tokenizer.json", "config.json")
MULTIPART_BYTES = 8 << 20  # `aws s3 cp`'s threshold and part size


def default_qa_host() -> Path:
    release = ROOT / "target/release/qa-host"
    return release if release.exists() else ROOT / "target/debug/qa-host"


def first_request(base: str, model: str) -> tuple[float, float]:
    body = json.loads((ROOT / "fixtures/benz.json").read_text())
    body["model_type"] = model
    started = time.perf_counter()
    req = urllib.request.Request(base + "/", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{model}: HTTP {e.code}: {e.read().decode(errors='replace')}")
    elapsed = (time.perf_counter() - started) * 1e3
    if answer.get("Answer") != "1886":
        raise SystemExit(f"{model}: unexpected answer {answer}")
    return answer["timings_ms"]["fetch"], elapsed


def measure(qa_host: Path, env: dict, model: str) -> tuple[float, float]:
    proc, base = start_host(qa_host, dict(os.environ, **env))
    try:
        return first_request(base, model)
    finally:
        proc.kill()
        proc.wait()


def padded_model(dest: Path, total_mb: int) -> None:
    """The shipped model's files in `dest`, `model.onnx` grown to about `total_mb` MiB by an
    initializer no node uses (random float32, so nothing on the way compresses it)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    dest.mkdir(parents=True)
    for f in FILES[1:]:
        shutil.copy(MODEL / f, dest / f)
    model = onnx.load(str(MODEL / "model.onnx"))
    floats = max(0, (total_mb << 20) - (MODEL / "model.onnx").stat().st_size) // 4
    padding = np.random.default_rng(0).standard_normal(floats, dtype=np.float32)
    model.graph.initializer.append(numpy_helper.from_array(padding, name="storage_bench_padding"))
    onnx.save(model, str(dest / "model.onnx"))


def upload(s3, bucket: str, key: str, path: Path) -> None:
    """As `aws s3 cp` does: multipart above 8 MiB with the whole object's CRC64NVME."""
    import base64

    from awscrt import checksums

    data = path.read_bytes()
    if len(data) <= MULTIPART_BYTES:
        s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="CRC64NVME")
        return
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC64NVME",
                                           ChecksumType="FULL_OBJECT")["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), MULTIPART_BYTES), 1):
        part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                              Body=data[start:start + MULTIPART_BYTES], ChecksumAlgorithm="CRC64NVME")
        parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumCRC64NVME": part["ChecksumCRC64NVME"]})
    whole = base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                                 ChecksumCRC64NVME=whole, ChecksumType="FULL_OBJECT")


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--large-mb", type=int, default=250, help="size of the larger model's model.onnx in MiB (0: only the shipped model)")
    p.add_argument("--parts", default="8,16,64", help="ranged-download part sizes in MiB (QA_S3_PART_MB), comma-separated")
    p.add_argument("--concurrency", default="1,4,16", help="parts in flight (QA_S3_CONCURRENCY), comma-separated")
    p.add_argument("--smoke", action="store_true", help="--runs 1 --large-mb 40 --parts 8,16 --concurrency 1,4: checks the harness")
    p.add_argument("--qa-host", type=Path, default=default_qa_host())
    p.add_argument("--moto", default=str(ROOT / ".cache/tools-venv/bin/moto_server"))
    args = p.parse_args()
    if args.smoke:
        args.runs, args.large_mb, args.parts, args.concurrency = 1, 40, "8,16", "1,4"
    parts, concurrency = numbers(args.parts), numbers(args.concurrency)

    work = Path(tempfile.mkdtemp())
    models = {"shipped": work / "image/shipped"}
    shutil.copytree(MODEL, models["shipped"], ignore=lambda _d, names: [n for n in names if n not in FILES])
    if args.large_mb:
        models["large"] = work / "image/large"
        padded_model(models["large"], args.large_mb)
    sizes = {name: sum((d / f).stat().st_size for f in FILES) / 2**20 for name, d in models.items()}
    for name, image_dir in models.items():
        shutil.copytree(image_dir, work / "efs" / name)
    port = free_port()
    moto = subprocess.Popen([args.moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    load_before = os.getloadavg()
    rows: dict[tuple, list[tuple[float, float]]] = {}
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        for _ in range(600):
            try:
                s3.list_buckets()
                break
            except Exception:  # not listening yet
                time.sleep(0.1)
        s3.create_bucket(Bucket="models")
        for name, image_dir in models.items():
            for f in FILES:
                upload(s3, "models", f"{name}/{f}", image_dir / f)
        image_env = {"QA_MODELS_DIR": str(work / "image")}
        for _ in range(args.runs):
            for name in models:
                rows.setdefault((name, "image", "-", "-"), []).append(measure(args.qa_host, image_env, name))
                efs_env = {"QA_MODELS": f"efs{name}=efs:{work / 'efs' / name}"}
                rows.setdefault((name, "efs", "-", "-"), []).append(measure(args.qa_host, efs_env, f"efs{name}"))
                cache = work / "s3-cache"
                s3_env = dict(aws, QA_MODELS=f"s3{name}=s3://models/{name}/", QA_MODEL_CACHE_DIR=str(cache))
                for part in parts:
                    for inflight in concurrency:
                        shutil.rmtree(cache, ignore_errors=True)
                        env = dict(s3_env, QA_S3_PART_MB=str(part), QA_S3_CONCURRENCY=str(inflight))
                        rows.setdefault((name, "s3 cold", part, inflight), []).append(measure(args.qa_host, env, f"s3{name}"))
                # The cache the last cold start filled, found by a new process.
                rows.setdefault((name, "s3 warm", "-", "-"), []).append(measure(args.qa_host, s3_env, f"s3{name}"))
    finally:
        moto.kill()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"medians of {args.runs} run(s); qa-host: {args.qa_host}\n")
    print("| model | files (MiB) | source | part (MiB) | parts in flight | fetch + load (ms) | first request (ms) |")
    print("|---|---|---|---|---|---|---|")
    for (name, source, part, inflight), runs in rows.items():
        fetch = statistics.median(r[0] for r in runs)
        first = statistics.median(r[1] for r in runs)
        print(f"| {name} | {sizes[name]:.1f} | {source} | {part} | {inflight} | {fetch:.0f} | {first:.0f} |")
    print(f"\nload average (1, 5, 15 min): before {load_before}, after {load_after}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main()
