"""Run identity: cosmetic keys do not move a run, one W&B run per run directory, changed input files
are never silently reused, versioned checkpoint names resume; callbacks and loggers from config."""

import json
import shutil

import lightning as L
import pytest
import torch

from conftest import ROOT, cli, compose_cfg
from medinject.config import run_name
from medinject.train.callbacks import user_callbacks
from medinject.train.checkpoints import last_checkpoint

SAMPLE = ROOT / "src" / "medinject" / "sample_data"
QUICK = ("experiment=smoke", "trainer.max_steps=2", "eval.limit=2", "eval.tasks=[mcqu]", "trainer.enable_progress_bar=false")


def test_run_control_keys_do_not_move_a_run_and_result_keys_do():
    base = run_name(compose_cfg("experiment=smoke"))
    for cosmetic in ("trainer.enable_progress_bar=false", "data.cache=false", "trainer.log_every_n_steps=7",
                     "trainer.checkpoint_every_n_steps=3", "logger=csv", "skip_completed=false", "sweep_name=other",
                     "paths.cache_dir=/elsewhere", "eval.judge.timeout_s=5", "eval.device=cpu", "mixture.rounds=3", "mixture.per_round=5"):
        assert run_name(compose_cfg("experiment=smoke", cosmetic)) == base, cosmetic
    for decisive in ("optim.lr=1e-3", "seed=1", "trainer.max_steps=5", "adapter=lora", "eval.limit=3",
                     "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping"):
        assert run_name(compose_cfg("experiment=smoke", decisive)) != base, decisive


@pytest.mark.e2e
def test_a_single_run_and_a_sweep_run_of_the_same_config_write_different_wandb_runs(tmp_path):
    single = cli("train.py", *QUICK, "logger=wandb", f"hydra.run.dir={tmp_path}/outputs/" + "${medinject.run_name:}")
    assert single.returncode == 0, single.stderr[-2000:]
    sweep = cli("train.py", "-m", *QUICK, "data=native", "logger=wandb", f"hydra.sweep.dir={tmp_path}/multirun")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    (single_dir,) = (tmp_path / "outputs").iterdir()
    (sweep_dir,) = [p for p in (tmp_path / "multirun").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert single_dir.name == sweep_dir.name  # the same config...
    ids = [(d / "wandb_id").read_text().strip() for d in (single_dir, sweep_dir)]
    assert ids[0] != ids[1]  # ...in two W&B runs
    for run_dir, run_id in zip((single_dir, sweep_dir), ids):
        (offline,) = (run_dir / "wandb").glob("offline-run-*")
        assert offline.name.endswith(f"-{run_id}")


@pytest.mark.e2e
def test_an_edited_training_file_is_never_reported_as_skipped(tmp_path):
    data = tmp_path / "sample"
    shutil.copytree(SAMPLE, data)
    args = (*QUICK, "logger=csv", f"paths.sample_data={data}", f"hydra.run.dir={tmp_path}/run",
            "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor")  # a callback from config alone
    first = cli("train.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    results = tmp_path / "run" / "results.json"
    record = json.loads(results.read_text())
    assert record["status"] == "completed" and any(path.endswith("native/train/mcq.jsonl") for path in record["inputs"])
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "lr-AdamW" in header  # LearningRateMonitor reached the Trainer

    again = cli("train.py", *args)
    assert again.returncode == 0 and "already completed; skipped" in again.stderr + again.stdout

    train_file = data / "native" / "train" / "mcq.jsonl"
    rows = train_file.read_text(encoding="utf-8").splitlines()
    edited = json.loads(rows[0])
    edited["instruction"] += " (corrigé)"
    train_file.write_text("\n".join([json.dumps(edited, ensure_ascii=False), *rows[1:]]) + "\n", encoding="utf-8")
    stale = cli("train.py", *args)
    assert stale.returncode == 2
    last = stale.stderr.strip().splitlines()[-1]
    assert last.startswith(f"medinject: error: {tmp_path}/run: was computed from other inputs: {train_file} changed"), last
    assert "Traceback" not in stale.stderr and "skipped" not in stale.stderr + stale.stdout
    assert json.loads(results.read_text()) == record  # the old results are left as they were


def test_resume_picks_the_newest_versioned_checkpoint(tmp_path, smoke_cfg):
    from medinject.run import run

    cfg = smoke_cfg("trainer.max_steps=8", "trainer.checkpoint_every_n_steps=4", "eval.limit=2", "eval.tasks=[mcqu]")
    assert run(cfg)["status"] == "completed"
    checkpoints = tmp_path / "run" / "checkpoints"
    # what a resume from an older checkpoint leaves: Lightning versions a name that already exists
    (checkpoints / "step=8.ckpt").rename(checkpoints / "step=8-v1.ckpt")
    (checkpoints / "step=9-v1.ckpt").write_bytes(b"cut short by a kill")  # newer by name, does not load
    (checkpoints / "last.ckpt").unlink()
    (tmp_path / "run" / "results.json").unlink()
    assert last_checkpoint(checkpoints) == (checkpoints / "step=8-v1.ckpt", 8)
    resumed = run(cfg)
    assert resumed["status"] == "completed" and resumed["train"]["resumed_from_step"] == 8


def test_last_checkpoint_orders_steps_and_versions_and_skips_truncated_files(tmp_path):
    for name, step in [("step=4.ckpt", 4), ("step=12.ckpt", 12), ("step=12-v1.ckpt", 12), ("step=12-v2.ckpt", 12)]:
        torch.save({"global_step": step}, tmp_path / name)
    (tmp_path / "step=12-v2.ckpt").write_bytes(b"truncated")
    assert last_checkpoint(tmp_path) == (tmp_path / "step=12-v1.ckpt", 12)


def test_callbacks_from_a_config_file_and_the_command_line_are_instantiated():
    cfg = compose_cfg("callbacks=early_stopping", "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor")
    callbacks = user_callbacks(cfg)
    assert [type(c).__name__ for c in callbacks] == ["EarlyStopping", "LearningRateMonitor"]
    assert all(isinstance(c, L.Callback) for c in callbacks)
