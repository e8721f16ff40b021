#!/usr/bin/env bash
# The wheels bench/gpu_check.sh carries to a GPU machine without network whose image already holds
# torch, lightning, transformers, peft, accelerate, pandas, pyarrow, scipy, sacrebleu, pytest and the
# rest of its list (device KINDS.md), into .whl/ (ignored by git). What medinject needs beyond that
# image, pinned to the versions `make test` runs here:
#
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU image's Python
#
# Not carried: wandb and wandb-workspaces (the kit's runs log with logger=csv, which never imports
# them), vLLM (several hundred MB; its CUDA path is checked through its own loaders, see
# tests/test_vllm_runners.py) and WordNet (the kit's runs set eval.meteor=false).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
WHEELS=(
  hydra-core==1.3.8 omegaconf==2.3.1
  bitsandbytes==0.50.2
  evaluate==0.4.6 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  submitit==1.5.4 hydra-submitit-launcher==1.2.0
  nltk==3.10.4
  trl==1.16.0
)
rm -rf .whl && mkdir -p .whl
for pkg in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$pkg" \
    || { echo "gpu_wheels: could not download $pkg for Python $PYVER" >&2; exit 1; }
done
# published as source only (omegaconf needs antlr4 4.9.*): their wheels, pure Python, are built here
for pkg in antlr4-python3-runtime==4.9.3 rouge_score==0.1.2; do
  python3 -m pip wheel -q --no-deps --no-binary=:all: -w .whl "$pkg" \
    || { echo "gpu_wheels: could not build $pkg" >&2; exit 1; }
done
echo "gpu_wheels: $(ls .whl | wc -l) wheels, $(du -sm .whl | cut -f1) MiB in .whl/ (Python $PYVER)"
