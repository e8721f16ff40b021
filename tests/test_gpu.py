"""The GPU check: the real CLI end to end on CUDA (skipped without CUDA, with the reason).

CPUs hide device bugs: Lightning moves the module back to the CPU when `fit` ends, and a 4-bit base
sits on the GPU while Lightning's module still reports `cpu` before `fit`. These runs fail if any
stage (probe losses, saving, evaluation, re-evaluation) runs on the wrong device.
`bench/gpu_check.sh` runs this file and prints times and peak GPU memory."""

import json
import time

import pytest
import torch

from conftest import cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs these where one is lent)"),
]

# eval.meteor=false: the GPU image has no WordNet, and METEOR is not what this checks
GPU_SMOKE = ("experiment=smoke", "eval.backend=hf", "eval.meteor=false", "logger=csv", "trainer.enable_progress_bar=false", "eval.limit=8")


def _train(run_dir, *overrides: str) -> dict:
    started = time.perf_counter()
    result = cli("train.py", *GPU_SMOKE, *overrides, f"hydra.run.dir={run_dir}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    print(f"gpu-check: {' '.join(overrides) or 'default'}: {time.perf_counter() - started:.1f} s, "
          f"train {record['timing']['train']:.1f} s, eval {record['timing']['eval']:.1f} s, "
          f"peak GPU memory {record['train']['peak_gpu_memory_gib']:.3f} GiB, devices {record['devices']}")
    return record


@pytest.mark.parametrize("adapter", ["qlora", "dora"])
def test_training_and_evaluation_run_on_the_gpu(tmp_path, adapter):
    record = _train(tmp_path / "run", "trainer=gpu", f"adapter={adapter}")
    assert record["status"] == "completed"
    assert record["devices"] == {"train": "cuda:0", "eval": "cuda:0"}
    assert record["train"]["peak_gpu_memory_gib"] > 0
    assert record["metrics"]["train/probe_loss_end"] < record["metrics"]["train/probe_loss_start"]
    if adapter == "qlora":  # re-evaluation places the model on the GPU too
        result = cli("-m", "medinject.eval", str(tmp_path / "run"), "eval.limit=2", timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((tmp_path / "run" / "results.json").read_text())["devices"]["eval"] == "cuda:0"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_ddp_over_two_gpus(tmp_path):
    record = _train(tmp_path / "run", "trainer=ddp", "trainer.devices=2", "adapter=qlora")
    assert record["train"]["world_size"] == 2
    assert record["devices"] == {"train": "cuda:0", "eval": "cuda:0"}
