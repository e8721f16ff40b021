"""The paper-scale study: `experiment=paper` composes the released setup (README, "Evaluation" and
"Reproducing the study") for all seven configurations, and its dry run plans the SLURM submission on a
CPU machine without the model.
A shrunk paper run's batches are inspected in test_released.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, ROOT

CONFIGS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def _paper(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["experiment=paper", "paths.output_dir=/tmp/unused", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("data", CONFIGS)
def test_the_paper_experiment_is_the_released_setup_for_every_configuration(data):
    cfg = _paper(f"data={data}")
    assert cfg.data.name == data
    assert cfg.model.path == "Qwen/Qwen3-4B-Instruct-2507" and cfg.model.dtype == "bfloat16"
    assert cfg.model.attn_implementation == "flash_attention_2"
    a = cfg.adapter
    assert (a.method.value, a.quantization, a.r, a.alpha, a.dropout) == ("dora", None, 16, 16, 0.05)
    assert sorted(a.target_modules) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    t = cfg.trainer
    assert (t.max_epochs, t.max_steps, t.batch_size, t.accumulate_grad_batches) == (10, -1, 12, 8)
    assert t.batch_size * t.accumulate_grad_batches == 96  # per GPU
    assert t.gradient_checkpointing and t.precision == "bf16-mixed" and t.accelerator == "gpu"
    assert (cfg.optim.lr, cfg.optim.warmup_ratio) == (1e-4, 0.05)
    assert cfg.data.max_length == 2048 and cfg.seed == 42
    assert cfg.mix.strategy.value == "equal_budget" and cfg.mix.budget == 33493
    assert [task.value for task in cfg.data.train_tasks] == ["mcqu", "mcq"]  # multiple choice only
    assert cfg.data.completion_only_loss is False  # the loss covers the whole sequence
    assert cfg.prompt.system == "" and not any(cfg.prompt.task_hints.values())  # the item's own turns only
    assert sorted(cfg.eval.test_sets) == ["native", "translated"]
    assert [task.value for task in cfg.eval.tasks] == ["mcqu", "mcq", "oeq"]  # open answers evaluated, not trained on
    assert cfg.eval.protocol.value == "strict"
    assert cfg.eval.judge.backend.value == "local" and cfg.eval.judge.model == "google/medgemma-27b-text-it"
    assert cfg.eval.judge.rubric.value == "released" and cfg.eval.judge.batch_size == 4
    assert cfg.hydra.sweeper.params.data == "glob(*)"  # `-m experiment=paper` sweeps the seven and the base model


def test_other_adapters_and_several_gpus_are_one_override_away_and_slurm_asks_for_matching_tasks():
    assert _paper("adapter=qlora").adapter.quantization.value == "nf4"
    assert _paper("adapter=qdora").adapter.method.value == "dora"
    cfg = _paper("trainer=ddp", "trainer.devices=4", "hydra/launcher=slurm")
    assert cfg.trainer.strategy == "ddp"
    assert cfg.trainer.batch_size * cfg.trainer.accumulate_grad_batches * cfg.trainer.devices == 96 * 4
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == 4  # one process per GPU for Lightning
    cpu = _paper("trainer=cpu", "hydra/launcher=slurm")
    assert OmegaConf.to_container(cpu.hydra.launcher, resolve=True)["gpus_per_node"] == 0


def _without_slurm_client() -> dict:
    """The environment with every PATH folder holding `srun` left out: a laptop planning a submission."""
    folders = [f for f in os.environ["PATH"].split(os.pathsep) if f and not (Path(f) / "srun").exists()]
    return {**os.environ, "PATH": os.pathsep.join(folders)}


def _dry_run(sweep_dir, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=paper", "hydra/launcher=slurm", "dry_run=true", f"hydra.sweep.dir={sweep_dir}", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=_without_slurm_client(),
    )


def test_the_dry_run_plans_eight_sbatch_jobs_without_a_model_and_writes_no_run(tmp_path):
    sweep_dir = tmp_path / "paper"
    # The bundled sample holds a few hundred rows, so the budget is shrunk; the rest is the paper's.
    result = _dry_run(sweep_dir, "mix.budget=60")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("=== job ") == 8  # the seven configurations and the base model
    assert out.count("#!/bin/bash") == 8 and out.count("#SBATCH --gpus-per-node=1") == 8
    assert out.count("#SBATCH --ntasks-per-node=1") == 8
    for data in CONFIGS:
        assert f"data: {data}, mix equal_budget budget 60, max length 2048, seed 42" in out
    assert out.count("training examples: 60 ") == 7
    assert out.count("training examples: 0 ") == 1 and out.count("optimizer steps: 0;") == 1  # the base model trains nothing
    assert "adapter: none: the base model, evaluated as it is" in out
    assert out.count("estimated from characters") == 8  # no tokenizer on disk, no hub
    assert out.count("optimizer steps: 10;") == 7  # ceil(60 / 12) = 5 batches, ceil(5 / 8) = 1 step, 10 epochs
    peaks = [float(line.split()[-2]) for line in out.splitlines() if line.startswith("peak allocated")]
    assert len(peaks) == 8 and all(0 < gib <= 24 for gib in peaks)  # DoRA, 12 x 2048, checkpointing: the chunked loss
    assert "one job array (#SBATCH --array=0-7%8)" in out and "nothing was submitted" in out
    assert not sweep_dir.exists()  # no run directory, no results.json, no submitit folder
    # what the comparisons can detect, per test set and task, for 1, 3, 5 and 10 seeds (power.py)
    assert "80% power at Holm's smallest alpha (0.05 / 210 tests" in out  # 8 configurations (the base row too) - 1, x 30
    power = [line for line in out.splitlines() if line.startswith("  native/") or line.startswith("  translated/")]
    assert len(power) == 6  # two test sets x three tasks
    for line in power:
        mdes = [float(part.split()[-1]) for part in line.split(": ", 1)[1].split(", ")]
        assert "1 seed (this sweep)" in line and len(mdes) == 4 and mdes[1] > mdes[2] > mdes[3] > 0
    assert "(1 seed: a z test that takes the seed variance as known" in out  # why 2 seeds can read worse than 1


def test_a_dry_run_reports_every_job_that_cannot_run_and_fails(tmp_path):
    result = _dry_run(tmp_path / "paper")  # 33,493 examples per configuration: far more than the sample holds
    assert result.returncode != 0
    assert result.stdout.count("cannot run:") == 7  # the base model reads only the test sets: it can
    assert "dry run: 7 job(s) cannot run" in result.stdout + result.stderr
    assert not (tmp_path / "paper").exists()
