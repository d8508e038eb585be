# syntax=docker/dockerfile:1
# The Lambda container image: the qa-host bootstrap on the custom runtime base
# (provided.al2023), ONNX Runtime, the guest component, and the models for the "image" option.
#
#   docker build -t qa-wasm-lambda .                          # x86_64
#   docker build --platform linux/arm64 -t qa-wasm-lambda .   # Graviton
#
# Not built in this repository's CI (its machines have no Docker engine); the layout it
# produces is what the README's deployment notes describe.

ARG ORT_VERSION=1.22.1

# Build on the same distribution as the runtime so the binary's glibc requirements match.
FROM public.ecr.aws/amazonlinux/amazonlinux:2023 AS build
ARG ORT_VERSION
RUN dnf install -y gcc gcc-c++ make python3 python3-pip tar gzip findutils && dnf clean all
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 \
 && /root/.cargo/bin/rustup target add wasm32-wasip2
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p qa-guest --target wasm32-wasip2 \
 && cargo build --locked --release -p qa-host
# ONNX Runtime: the shared library inside the onnxruntime wheel from PyPI.
RUN python3 -m pip download --no-deps --only-binary=:all: "onnxruntime==${ORT_VERSION}" -d /tmp/ort \
 && python3 -m zipfile -e /tmp/ort/onnxruntime-*.whl /tmp/ort/x \
 && cp /tmp/ort/x/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION} /src/libonnxruntime.so

FROM public.ecr.aws/lambda/provided:al2023
COPY --from=build /src/target/release/qa-host ${LAMBDA_RUNTIME_DIR}/bootstrap
COPY --from=build /src/libonnxruntime.so /src/target/wasm32-wasip2/release/qa-guest.wasm ${LAMBDA_TASK_ROOT}/
COPY models/ ${LAMBDA_TASK_ROOT}/models/
ENV ORT_DYLIB_PATH=${LAMBDA_TASK_ROOT}/libonnxruntime.so \
    QA_GUEST=${LAMBDA_TASK_ROOT}/qa-guest.wasm \
    QA_MODELS_DIR=${LAMBDA_TASK_ROOT}/models \
    QA_PRELOAD=nlp1
# The handler name is unused by qa-host; the custom runtime needs one.
CMD ["qa"]
