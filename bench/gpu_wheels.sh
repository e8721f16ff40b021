#!/usr/bin/env bash
# Download, for a bare GPU machine (Python 3.12, x86-64, with torch, lightning, transformers and peft
# already there), the wheels bench/gpu_check.sh needs, into .whl/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for pkg in hydra-core omegaconf antlr4-python3-runtime bitsandbytes evaluate datasets dill multiprocess xxhash \
           submitit hydra-submitit-launcher rouge_score nltk absl-py wandb-workspaces wandb sentry-sdk gitpython \
           gitdb smmap pydantic pydantic-core annotated-types typing-inspection platformdirs filelock; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$pkg" || echo "gpu_wheels: could not download $pkg" >&2
done
ls .whl
