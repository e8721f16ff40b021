#!/usr/bin/env bash
# First run: about 15-25 minutes (downloads about 4 GB: torch 2.11 with its CUDA libraries); later runs: about 10 minutes.
#
# Rehearses bench/gpu_check.sh on a CPU machine against the GPU image's own packages, so that our code
# meets the image's torch 2.11 and transformers 5.17, not only the versions `make test` pins:
#   1. a Python 3.12 venv ($GPU_REHEARSAL_VENV, default /tmp/medinject-gpu-rehearsal) with only the
#      image's packages, at the image's versions where they are known (device KINDS.md);
#   2. the wheels the kit carries (bench/gpu_wheels.sh 3.12), installed exactly as the kit installs them;
#   3. bench/gpu_check.sh up to its first CUDA call: every module imported, the gpu tests collected, a
#      CPU smoke run through train.py, and bench/gpu_shape.py's steps at the tiny shape; it prints the
#      carried size (tree + wheels), which must stay within what the GPU machine takes in (64 MiB).
# Not part of `make test` (the download).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPU_REHEARSAL_VENV:-/tmp/medinject-gpu-rehearsal}
PY312=${PY312:-python3.12}
if ! "$PY312" -V >/dev/null 2>&1; then  # a pyenv shim with 3.12 installed but not selected
  PY312=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
  [ -n "$PY312" ] || { echo "rehearsal: needs Python 3.12 (set PY312=/path/to/python3.12)" >&2; exit 1; }
fi
# The image's packages (device KINDS.md); versions where a session read them there, the others unpinned.
IMAGE=(
  torch==2.11.0 transformers==5.17.0 lightning==2.6.6 pytorch-lightning==2.6.6 torchmetrics==1.9.0
  accelerate==1.15.0 huggingface_hub==1.33.0 tokenizers==0.23.2 safetensors==0.8.0 sentencepiece==0.2.2 numpy==2.5.2
  peft pytest sacrebleu scipy statsmodels pandas pyarrow pyyaml requests tqdm regex filelock psutil matplotlib
  scikit-learn xxhash fsspec aiohttp httpx absl-py jinja2 click joblib six packaging typing-extensions cloudpickle
)
if [ ! -f "$VENV/.image-installed" ]; then
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${IMAGE[@]}"
  touch "$VENV/.image-installed"
fi
"$VENV/bin/python" -c "import torch, transformers; print('rehearsal: image packages: torch', torch.__version__, 'transformers', transformers.__version__)"
bash bench/gpu_wheels.sh 3.12
PYTHON="$VENV/bin/python" GPU_CHECK_REHEARSAL=1 GPU_CHECK_SITE=/tmp/medinject-rehearsal-site bash bench/gpu_check.sh
carried=$(( ( $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) + $(du -sb .whl | cut -f1) ) / 1048576 ))
if [ "$carried" -gt 60 ]; then
  echo "rehearsal: FAILED: the kit carries $carried MiB (limit 60 of the GPU machine's 64)" >&2
  exit 1
fi
echo "rehearsal: passed; carried $carried MiB"
