#!/usr/bin/env bash
# The project's GPU check, first thing to run wherever a CUDA GPU is lent (about 6 minutes on one H200):
#   1. the `gpu` tests (tests/test_gpu.py: QLoRA and DoRA runs of the tiny model through the real CLI on
#      CUDA, re-evaluation on CUDA, DDP when two GPUs are present; tests/test_loss.py: the CUDA loss path);
#   2. the study's shape (bench/gpu_shape.py: DoRA and QLoRA at Qwen3-4B's shape against TRL, peak
#      memory against the dry run's estimate, batched against per-item evaluation), one JSON line a figure.
#
#   bash bench/gpu_wheels.sh 3.12 && bash bench/gpu_check.sh    # on a bare GPU machine: carry .whl/
#   PYTHON=python3.12 bash bench/gpu_check.sh
#   GPU_CHECK_REHEARSAL=1 bash bench/gpu_check.sh                # everything up to the first CUDA call, on a CPU
#
# Wheels in .whl/ (bench/gpu_wheels.sh) are installed first, the way the device tool's README says:
# pip --no-index --no-deps --target, then PYTHONPATH. The runs log with logger=csv and set
# eval.meteor=false, so neither wandb nor WordNet has to travel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
start=$(date +%s)
site=${GPU_CHECK_SITE:-/tmp/medinject-site}
if compgen -G ".whl/*.whl" >/dev/null; then
  rm -rf "$site"
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH=$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
tree_mib=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels_mib=$(du -sb .whl 2>/dev/null | cut -f1 || echo 0)
echo "gpu check: carried $(( (tree_mib + ${wheels_mib:-0}) / 1048576 )) MiB (tree $(( tree_mib / 1048576 )) MiB, wheels $(( ${wheels_mib:-0} / 1048576 )) MiB)"
$PYTHON - <<'PY'
import importlib, pkgutil, sys
import medinject
skipped = {"medinject.eval.vllm_backend", "medinject.eval.vllm_constraint"}  # vLLM does not travel
names = [m.name for m in pkgutil.walk_packages(medinject.__path__, "medinject.") if m.name not in skipped and not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
for absent in ("wandb", "vllm"):
    if absent in sys.modules:
        raise SystemExit(f"gpu check: importing medinject imported {absent}")
import torch, transformers, lightning, peft, bitsandbytes
print(f"gpu check: imported {len(names)} modules; torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, "
      f"lightning {lightning.__version__}, peft {peft.__version__}, bitsandbytes {bitsandbytes.__version__}")
PY
$PYTHON -m pytest -q --collect-only -m gpu tests/test_gpu.py tests/test_loss.py -p no:cacheprovider | tail -1
if [ "$REHEARSAL" = "1" ]; then
  run_dir=$(mktemp -d)
  $PYTHON train.py experiment=smoke eval.backend=hf eval.meteor=false logger=csv trainer.enable_progress_bar=false \
    trainer.max_steps=2 eval.limit=2 "hydra.run.dir=$run_dir" >/dev/null
  $PYTHON -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['status']=='completed', r; print('gpu check: CPU smoke run completed,', r['devices'])" "$run_dir/results.json"
  $PYTHON bench/gpu_shape.py --rehearse --budget-s 900
  echo "gpu check (rehearsal): $(( $(date +%s) - start )) s; stopped before the first CUDA call"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "gpu check: no nvidia-smi here"
$PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"
log=${TMPDIR:-/tmp}/medinject-gpu-check.log
set +e
$PYTHON -m pytest -q -m gpu tests/test_gpu.py tests/test_loss.py -s -rA -p no:cacheprovider >"$log" 2>&1
status=$?
set -e
grep -E "gpu-check:|passed|failed|skipped|error|Error" "$log" || tail -n 40 "$log"
echo "gpu check: tests $(( $(date +%s) - start )) s, pytest exit status $status"
$PYTHON bench/gpu_shape.py --device cuda --budget-s $(( 360 - ($(date +%s) - start) > 120 ? 360 - ($(date +%s) - start) : 120 )) || status=1
echo "gpu check: $(( $(date +%s) - start )) s in all, exit status $status"
exit "$status"
