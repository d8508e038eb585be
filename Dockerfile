# syntax=docker/dockerfile:1
# The Lambda container image: the qa-host bootstrap on the custom runtime base
# (provided.al2023), ONNX Runtime, the guest component with its precompiled artifact, and the
# models for the "image" deployment. deploy/README.md has the whole deployment.
#
# One image per architecture (Lambda does not run multi-architecture image indexes; the
# provenance attestation would make one, hence --provenance=false):
#
#   docker buildx build --platform linux/amd64 --provenance=false -t qa-wasm-lambda:x86_64 --load .
#   docker buildx build --platform linux/arm64 --provenance=false -t qa-wasm-lambda:arm64 --load .
#
# Add --build-arg WITH_MODELS=false for the S3 and EFS deployments (no model in the image).
#
# Stages:
#   guest   the wasm32-wasip2 guest component; wasm is the same for every target, so this stage
#           runs on the build machine's own platform ($BUILDPLATFORM), never emulated.
#   build   qa-host for the target ($TARGETPLATFORM: native on a builder of that architecture,
#           emulated otherwise), libonnxruntime.so for $TARGETARCH from the onnxruntime wheel on
#           PyPI, and the guest precompiled by that qa-host (`compile-guest`), with its
#           snapshot for each model of the `models` stage.
#   models  the models directory, or only its README when WITH_MODELS=false.
#   final   provided:al2023 with the files below and nothing else.
#
# Final image layout (scripts/image-layout.sh reproduces it from local builds; keep the two in
# step: it parses this file and refuses COPY lines it does not know):
#   /var/runtime/bootstrap                          qa-host
#   /var/task/libonnxruntime.so                     ONNX Runtime (ORT_VERSION below)
#   /var/task/qa-guest.wasm                         the guest component
#   /var/task/qa-guest.wasm.<sha256-16>.cwasm       the guest precompiled for this qa-host
#   /var/task/qa-guest.wasm.<sha256-16>.instrumented.cwasm
#                                                   the guest with snapshot accessors (Wizer)
#   /var/task/qa-guest.wasm.<sha256-16>.prepared-<key>.cwasm
#                                                   the guest's snapshot per shipped model
#   /var/task/models/<name>/                        model.onnx, tokenizer.json, config.json
#
# Size budget (uncompressed; Lambda allows 10 GB):
#   provided:al2023 base                      < 40 MB
#   bootstrap (qa-host release)               46 MB    (wasmtime + Cranelift + AWS SDK; measured x86_64)
#   libonnxruntime.so                         ~ 29 MB  (1.31.1; 25 MB on arm64)
#   qa-guest.wasm + .cwasm + instrumented     ~ 3 + 8 + 8 MB
#   snapshot per shipped model                ~ 15 MB  (0 with WITH_MODELS=false)
#   models/nlp1 (int8)                        ~ 34 MB  (0 with WITH_MODELS=false)
#   total                                     ~ 184 MB with the model, ~ 133 MB without; budget 190 MB
#
# Everything is downloaded from package registries: rustup's toolchain, crates.io, and the
# onnxruntime wheel from PyPI.

ARG RUST_VERSION=1.95.0
ARG ORT_VERSION=1.31.1
ARG WITH_MODELS=true

# ---------------------------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM public.ecr.aws/amazonlinux/amazonlinux:2023 AS guest
ARG RUST_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Package versions are not pinned: AL2023 locks its repositories to the release of the base
# image (deterministic upgrades), so the image tag decides them.
# hadolint ignore=DL3041
RUN dnf install -y gcc && dnf clean all
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}" --target wasm32-wasip2
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
# The workspace: every member of Cargo.toml's [workspace] members, and the WIT contract.
# (scripts/lint-deploy.sh checks that each member is copied.)
COPY Cargo.toml Cargo.lock ./
COPY wit/ wit/
COPY guest/ guest/
COPY host/ host/
COPY bench/ bench/
COPY tools/ tools/
RUN --mount=type=cache,target=/root/.cargo/registry \
    cargo build --locked --release -p qa-guest --target wasm32-wasip2 \
 && mkdir -p /out \
 && cp target/wasm32-wasip2/release/qa-guest.wasm /out/

# ---------------------------------------------------------------------------------------------
FROM scratch AS models-true
COPY models/ /models/

FROM scratch AS models-false
COPY models/README.md /models/README.md

# A stage of this file chosen by the build argument, not an image from a registry: nothing to tag.
# hadolint ignore=DL3006
FROM models-${WITH_MODELS} AS models

# ---------------------------------------------------------------------------------------------
# Built on the distribution of the runtime so the binary's glibc requirements match.
FROM public.ecr.aws/amazonlinux/amazonlinux:2023 AS build
ARG RUST_VERSION
ARG ORT_VERSION
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3041
RUN dnf install -y gcc gcc-c++ make python3 python3-pip && dnf clean all
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:$PATH
# ONNX Runtime: the shared library inside the onnxruntime wheel for the target architecture.
# Only the C library is used, so the wheel's Python version does not matter; it is named
# because AL2023's python3 (3.9) has no wheel of the pinned release. Keep ORT_VERSION equal to
# scripts/env.sh's.
RUN case "${TARGETARCH}" in \
      amd64) arch=x86_64 ;; \
      arm64) arch=aarch64 ;; \
      *) echo "TARGETARCH='${TARGETARCH}': build with BuildKit for linux/amd64 or linux/arm64" >&2; exit 1 ;; \
    esac \
 && if [ "$(uname -m)" != "${arch}" ]; then \
      echo "this stage runs on $(uname -m) but targets ${arch}; build with --platform linux/${TARGETARCH}" >&2; exit 1; \
    fi \
 && python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      --platform "manylinux_2_28_${arch}" "onnxruntime==${ORT_VERSION}" -d /tmp/ort \
 && python3 -m zipfile -e /tmp/ort/onnxruntime-*.whl /tmp/ort/x \
 && mkdir -p /out \
 && cp "/tmp/ort/x/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" /out/libonnxruntime.so \
 && rm -rf /tmp/ort
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY wit/ wit/
COPY guest/ guest/
COPY host/ host/
COPY bench/ bench/
COPY tools/ tools/
RUN --mount=type=cache,target=/root/.cargo/registry \
    cargo build --locked --release -p qa-host \
 && cp target/release/qa-host /out/bootstrap
COPY --from=guest /out/qa-guest.wasm /out/qa-guest.wasm
COPY --from=models /models/ /models/
# Each model's graph optimized once here instead of at every cold start (its cold
# load in about 0.88x the time; docs/performance.md, "Cold start"), by the release the image ships,
# at the level whose saved graphs hold no machine-specific layouts (first, in the RUN below).
# The guest precompiled by the bootstrap itself: same wasmtime, same settings, beside it the
# instrumented guest and the guest's snapshot for each model the image ships (the snapshot a
# request starts from, with the model's tokenizer parsed). They carry this machine's CPU
# features; on a Lambda host that lacks one, wasmtime refuses them and the guest is compiled
# at cold start (about 1.3 s; a snapshot about 4 s) and cached in /tmp instead.
RUN find /models -mindepth 1 -maxdepth 1 -type d -exec /out/bootstrap optimize-model {} + \
 && /out/bootstrap compile-guest --guest /out/qa-guest.wasm --models-dir /models

# ---------------------------------------------------------------------------------------------
FROM public.ecr.aws/lambda/provided:al2023
COPY --from=build /out/bootstrap ${LAMBDA_RUNTIME_DIR}/bootstrap
COPY --from=build /out/libonnxruntime.so /out/qa-guest.wasm /out/qa-guest.wasm.*.cwasm ${LAMBDA_TASK_ROOT}/
COPY --from=build /models/ ${LAMBDA_TASK_ROOT}/models/
# Each deployment template overrides QA_PRELOAD (and adds QA_MODELS) for its own models.
ENV ORT_DYLIB_PATH=${LAMBDA_TASK_ROOT}/libonnxruntime.so \
    QA_GUEST=${LAMBDA_TASK_ROOT}/qa-guest.wasm \
    QA_MODELS_DIR=${LAMBDA_TASK_ROOT}/models \
    QA_PRELOAD=nlp1
# The custom runtime's entry point passes this handler name in _HANDLER and starts the
# bootstrap with no arguments; qa-host does not use it.
CMD ["qa"]
