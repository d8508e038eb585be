#!/usr/bin/env python3
"""Fails when building the host alone would compile a crate that the test build compiles
differently.

`scripts/setup.sh` builds only the host (`cargo build -p qa-host`), `scripts/run.sh` the host
without S3 (`--no-default-features`); `scripts/test.sh` builds the host's tests with the
benchmark and the wasmtime CLI in one cargo invocation. Cargo compiles a
crate once per feature set (the run-time and build-time sides apart), so any crate the two
resolve differently is compiled twice, and everything above it too: `either` alone differing
once recompiled wasmtime, Cranelift and the AWS SDK. host/Cargo.toml names such features
("Shared with the test build"); this check keeps that list complete.

It compares cargo's unit graphs (what each build would compile, with features, side and
profile), which stable cargo prints only with RUSTC_BOOTSTRAP=1; nothing is built.
"""
import json
import os
import subprocess
import sys

HOST_ALONE = ["-p", "qa-host"]
# The first answer's host: only qa-host itself may differ (it is compiled once more).
HOST_WITHOUT_S3 = ["-p", "qa-host", "--no-default-features"]
TEST_BUILD = ["--all-targets", "-p", "qa-host", "-p", "qa-bench", "-p", "wasmtime-onnx"]


def units(args):
    out = subprocess.run(
        ["cargo", "build", "--quiet", "--locked", "--unit-graph", "-Z", "unstable-options", *args],
        check=True, capture_output=True, text=True, env=dict(os.environ, RUSTC_BOOTSTRAP="1"),
    ).stdout
    found = {}
    for unit in json.loads(out)["units"]:
        # "registry+https://...#name@version" or "path+file:///...#version": name it readably.
        package = unit["pkg_id"].rsplit("#", 1)[-1]
        key = (package, unit["target"]["name"], unit["mode"], unit["platform"], json.dumps(unit["profile"], sort_keys=True))
        found.setdefault(key, set()).add(tuple(unit["features"]))
    return found


def differences(alone, tests, skip=()):
    return [
        f"  {key[0]} ({key[1]}, {key[2]}): the host alone has features {list(features) or '-'}, "
        f"the test build {[list(f) for f in tests.get(key, ())] or 'does not build it'}"
        for key, wanted in sorted(alone.items())
        if key[1] not in skip
        for features in sorted(wanted)
        if features not in tests.get(key, ())
    ]


def main():
    tests = units(TEST_BUILD)
    failed = False
    for name, args, skip in [("the host alone", HOST_ALONE, ()), ("the host without S3", HOST_WITHOUT_S3, ("qa_host", "qa-host"))]:
        alone = units(args)
        differ = differences(alone, tests, skip)
        if differ:
            print(f"check-features: the test build would compile these differently from {name} ({' '.join(args)}):", file=sys.stderr)
            print("\n".join(differ), file=sys.stderr)
            failed = True
        else:
            shared = sum(len(features) for key, features in alone.items() if key[1] not in skip)
            print(f"check-features: all {shared} units of {name} but itself are the test build's", file=sys.stderr)
    if failed:
        print('name the features in host/Cargo.toml under "Shared with the test build"', file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
