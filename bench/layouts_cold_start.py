"""Cold start of the two deployment layouts, measured the same way, side by side.

  image  the container image's files (scripts/image-layout.sh, from the Dockerfile): the
         bootstrap in /var/runtime, everything else in /var/task, set by the image's ENV;
  zip    the zip package (scripts/package-lambda.sh x86_64 --with-models) unpacked as Lambda
         unpacks it into /var/task, found by the host's defaults.

Both use this machine's build of qa-host (release if built, else debug) as the bootstrap, the
shipped model preloaded (QA_PRELOAD=nlp1) and an empty /tmp cache per run (a cold
environment). Each run starts cargo-lambda's Runtime API emulator and the bootstrap, and
measures init (process start until the bootstrap logs "preloaded") and the first and second
requests (Invoke API round trips). Runs alternate between the layouts; the table shows
medians. What Lambda adds before init (fetching image layers, or downloading and unpacking the
zip) is not measured here.

    source scripts/env.sh && python3 bench/layouts_cold_start.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lambda_init import measure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def image_layout(work: Path, bootstrap: Path) -> tuple[list[str], dict[str, str], Path]:
    target = bootstrap.parent.parent
    profile = bootstrap.parent.name
    out = subprocess.run(["bash", str(ROOT / "scripts/image-layout.sh"), "--target-dir", str(target), str(work / "image"), profile],
                         check=True, capture_output=True, text=True).stdout.strip()
    env = dict(line.split("=", 1) for line in Path(out).read_text().splitlines() if "=" in line)
    return [str(Path(env["LAMBDA_RUNTIME_DIR"]) / "bootstrap")], env, Path(env["LAMBDA_TASK_ROOT"])


def zip_layout(work: Path, bootstrap: Path) -> tuple[list[str], dict[str, str], Path]:
    package = work / "qa-x86_64.zip"
    subprocess.run(["bash", str(ROOT / "scripts/package-lambda.sh"), "x86_64", "--with-models", "--bootstrap", str(bootstrap),
                    "--out", str(package)], check=True, capture_output=True)
    task = work / "zip/var/task"
    with zipfile.ZipFile(package) as z:
        for info in z.infolist():
            os.chmod(z.extract(info, task), (info.external_attr >> 16) & 0o777)
    return [str(task / "bootstrap")], {"LAMBDA_TASK_ROOT": str(task), "QA_PRELOAD": "nlp1"}, task


def one_run(cargo_lambda: str, command: list[str], layout_env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PATH": os.environ["PATH"], **layout_env, "QA_CACHE_DIR": str(Path(tmp) / "qa-host"), "TMPDIR": tmp}
        return measure(cargo_lambda, command, env, "preloaded", cwd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cargo-lambda", default=str(ROOT / ".cache/tools-venv/bin/cargo-lambda"))
    p.add_argument("--bootstrap", type=Path, help="qa-host to use (default: target/release/qa-host if built, else target/debug/qa-host)")
    args = p.parse_args()
    bootstrap = args.bootstrap or next(b for b in (ROOT / "target/release/qa-host", ROOT / "target/debug/qa-host") if b.is_file())
    with tempfile.TemporaryDirectory() as work:
        layouts = {"image": image_layout(Path(work), bootstrap), "zip": zip_layout(Path(work), bootstrap)}
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in layouts}
        for _ in range(args.runs):
            for name, (command, env, cwd) in layouts.items():
                results[name].append(one_run(args.cargo_lambda, command, env, cwd))
    print(f"bootstrap: {bootstrap}; {args.runs} runs each, alternating; medians")
    print("| layout | init (ms) | first request (ms) | second request (ms) |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        med = [statistics.median(r[i] for r in runs) for i in range(3)]
        print(f"| {name} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} |")


if __name__ == "__main__":
    main()
