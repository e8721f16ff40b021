"""A whole run in-process (run(cfg) on the production config, shrunk): the real Lightning Trainer,
real 4-bit weights, the real evaluate module."""

import json

import pytest

from medinject.util.errors import UserError
from medinject.run import run


def test_smoke_run_writes_complete_results_and_learns(smoke_cfg):
    cfg = smoke_cfg("data=native+synthetic", "seed=3")
    metrics = run(cfg)["metrics"]
    out = cfg.paths.output_dir
    results = json.loads(open(f"{out}/results.json").read())
    assert results["status"] == "completed"
    assert results["metrics"] == metrics
    for test_set in ("native", "translated"):
        for task in ("mcqu", "mcq"):
            assert 0.0 <= metrics[f"eval/{test_set}/{task}/em"] <= 1.0
            assert metrics[f"eval/{test_set}/{task}/n"] == cfg.eval.limit
        assert 0.0 <= metrics[f"eval/{test_set}/mcq/hamming"] <= 1.0
    assert all(isinstance(v, float) for v in metrics.values())
    # fixed seed, fixed probe batches: the adapter must have lowered the training loss
    assert metrics["train/probe_loss_end"] < metrics["train/probe_loss_start"] - 0.05
    assert metrics["train/optimizer_steps"] == cfg.trainer.max_steps

    data = results["data"]
    assert data["config"] == "native+synthetic" and data["n_examples"] == cfg.mix.budget
    assert {o: sum(c.values()) for o, c in data["counts"].items()} == {"native": 24, "synthetic": 24}
    model = results["model"]
    assert model["quantization"] == "nf4" and 0 < model["trainable_params"] < model["total_params"]
    assert set(results["timing"]) >= {"data", "model", "train", "eval", "total"}

    from pathlib import Path

    run_dir = Path(out)
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert "name: native+synthetic" in (run_dir / "adapter" / "medinject_config.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 * 3 * cfg.eval.limit  # two test sets, three tasks
    for test_set in ("native", "translated"):
        assert metrics[f"eval/{test_set}/oeq/n"] == cfg.eval.limit
        assert {"bleu", "rouge1", "rouge2", "rougeL", "bertscore_f1", "answer_words_mean"} <= {
            k.rsplit("/", 1)[1] for k in metrics if k.startswith(f"eval/{test_set}/oeq/")
        }
        assert 0.0 <= metrics[f"eval/{test_set}/mcq/hamming_constrained"] <= 1.0
    mcq = [p for p in predictions if p["task"] != "oeq"]
    assert all(p["prediction_constrained"] and abs(sum(p["option_probabilities"].values()) - 1) < 1e-4 for p in mcq)
    assert {p["test_set"] for p in predictions} == {"native", "translated"}


def test_runs_are_reproducible_with_a_fixed_seed(smoke_cfg, tmp_path):
    first = run(smoke_cfg("trainer.max_steps=4", "eval.limit=4"))["metrics"]
    cfg = smoke_cfg("trainer.max_steps=4", "eval.limit=4")
    cfg.paths.output_dir = str(tmp_path / "again")
    second = run(cfg)["metrics"]
    assert first["train/probe_loss_end"] == pytest.approx(second["train/probe_loss_end"], abs=1e-6)


def test_a_failed_run_never_claims_success(smoke_cfg, tmp_path):
    cfg = smoke_cfg(f"data.sources.native.files=[{tmp_path}/missing.jsonl]")
    with pytest.raises(UserError, match="data.sources.native.files: file not found"):
        run(cfg)
    results = json.loads(open(f"{cfg.paths.output_dir}/results.json").read())
    assert results["status"] == "failed"
    assert "file not found" in results["error"]
    assert results["metrics"] == {}


def test_data_parallel_training_on_two_processes_shares_the_data_and_writes_one_result(tmp_path):
    """Lightning's DDP (gloo on CPU, the same code path as NCCL on GPUs) over real 4-bit weights."""
    import subprocess
    import sys

    from conftest import ROOT

    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "train.py", "experiment=smoke", "trainer.strategy=ddp", "trainer.devices=2", "logger=csv",
         "trainer.enable_progress_bar=false", "eval.limit=2", "eval.tasks=[mcqu]", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["train"]["world_size"] == 2
    # 48 examples in 12 batches of 4: each process trains on its own 6 batches per epoch, so 12
    # optimizer steps cover the data twice, and the token count is summed over both processes.
    assert record["metrics"]["train/optimizer_steps"] == 12
    assert record["metrics"]["train/tokens"] == 2 * record["data"]["tokenized"]["tokens"]
    assert len(list(run_dir.glob("**/results.json"))) == 1
