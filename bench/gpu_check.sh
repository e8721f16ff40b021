#!/usr/bin/env bash
# The project's GPU check, first thing to run wherever a CUDA GPU is available (< 5 minutes on one GPU):
# the `gpu` tests (tests/test_gpu.py: QLoRA and DoRA runs of the tiny model through the real CLI on
# CUDA, re-evaluation on CUDA, DDP when two GPUs are present; tests/test_loss.py: the CUDA loss path),
# with the card, times and peak memory.
#
#   bash bench/gpu_check.sh                 # in an environment with medinject installed (pip install -e .)
#   PYTHON=python3 bash bench/gpu_check.sh  # another interpreter
#
# On a bare GPU machine with only torch, lightning and transformers, carry the other packages as wheels
# (bench/gpu_wheels.sh downloads them into .whl/); this script installs .whl/*.whl first when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/medinject-site .whl/*.whl
  export PYTHONPATH=/tmp/medinject-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "gpu check: no nvidia-smi here"
$PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"
start=$(date +%s)
log=${TMPDIR:-/tmp}/medinject-gpu-check.log
set +e
$PYTHON -m pytest -q -m gpu tests/test_gpu.py tests/test_loss.py -s -rA -p no:cacheprovider >"$log" 2>&1
status=$?
set -e
grep -E "gpu-check:|passed|failed|skipped|error|Error" "$log" || tail -n 40 "$log"
echo "gpu check: $(( $(date +%s) - start )) s in all, pytest exit status $status"
exit "$status"
