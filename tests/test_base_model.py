"""The base model as a row (`data=base`) and any model evaluated without training
(`python -m medinject.eval --model ... --out DIR`), through the real CLI on the tiny model."""

import csv
import json
from pathlib import Path

import pytest
from conftest import cli, compose_cfg

from medinject.config import run_name

SMALL = ("experiment=smoke", "logger=csv", "trainer.enable_progress_bar=false", "eval.limit=2", "eval.tasks=[mcqu,oeq]")


def _predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_base_model_is_evaluated_without_training_and_any_model_dir_gives_the_same_rows(tmp_path):
    root = tmp_path / "runs"
    base_dir = root / "base"
    first = cli("train.py", "data=base", *SMALL, f"hydra.run.dir={base_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((base_dir / "results.json").read_text())
    assert record["status"] == "completed" and record["data"]["config"] == "base"
    assert record["model"]["adapter"] is None and record["model"]["trainable_params"] == 0
    assert record["model"]["quantization"] == "nf4"  # loaded as the QLoRA runs' base is
    assert record["metrics"]["train/optimizer_steps"] == 0 and record["data"]["n_examples"] == 0
    assert not (base_dir / "adapter").exists() and not (base_dir / "checkpoints").exists()
    assert {"eval/native/mcqu/em_loglik", "eval/translated/mcqu/em_constrained", "eval/native/oeq/rougeL"} <= set(record["metrics"])
    base_items = _predictions(base_dir)
    assert len(base_items) == sum(v for k, v in record["metrics"].items() if k.endswith("/n"))

    # its own directory name and hash, like any run: `base-s<seed>-<key>`, another key than native's
    base_name, native_name = (run_name(compose_cfg(f"data={name}", *SMALL)) for name in ("base", "native"))
    assert base_name.startswith("base-s42-") and native_name.startswith("native-s42-")
    assert base_name.split("-")[-1] != native_name.split("-")[-1]

    # the same command again: the completed base run is trusted without an adapter, and skipped
    again = cli("train.py", "data=base", *SMALL, f"hydra.run.dir={base_dir}")
    assert again.returncode == 0 and "already completed; skipped" in again.stderr + again.stdout

    # the same weights by path, as a model medinject did not train: the same rows, item by item
    model_path = record["model"]["path"]
    other_dir = root / "by-path"
    evaluated = cli("-m", "medinject.eval", "--model", model_path, "--out", str(other_dir), "--name", "released-checkpoint", *SMALL)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    other = json.loads((other_dir / "results.json").read_text())
    assert other["status"] == "completed" and other["data"]["config"] == "released-checkpoint" and other["model"]["adapter"] is None
    keys = ("test_set", "task", "id", "prompt", "output", "output_constrained", "option_probabilities")
    assert [{k: p.get(k) for k in keys} for p in _predictions(other_dir)] == [{k: p.get(k) for k in keys} for p in base_items]
    assert {k: v for k, v in other["metrics"].items() if k.startswith("eval/")} == {k: v for k, v in record["metrics"].items() if k.startswith("eval/")}

    # the report reads both, the base model as the baseline: a difference of exactly 0 on every metric
    report = cli("-m", "medinject.report", str(root), "--baseline", "base", "--resamples", "200")
    assert report.returncode == 0, report.stderr[-3000:]
    rows = [row for row in csv.DictReader((root / "summary.csv").open()) if row["config"] == "released-checkpoint"]
    assert rows and all(row["baseline"] == "base" and float(row["diff"]) == 0.0 for row in rows if row["diff"])
    assert any(row["metric"] == "eval/native/mcqu/em_loglik" and row["diff"] for row in rows)

    # and it is re-evaluated like any run (no adapter to load)
    reevaluated = cli("-m", "medinject.eval", str(base_dir), "eval.tasks=[mcqu]")
    assert reevaluated.returncode == 0, reevaluated.stderr[-3000:]
    assert json.loads((base_dir / "results.json").read_text())["reevaluated"]["overrides"] == ["eval.tasks=[mcqu]"]


def test_evaluating_a_model_refuses_a_folder_that_is_no_adapter_with_one_line(tmp_path):
    result = cli("-m", "medinject.eval", "--model", str(tmp_path), "--adapter", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"medinject: error: --adapter {tmp_path}: not a peft adapter folder (no adapter_config.json)"


@pytest.mark.slow
def test_a_trained_adapter_evaluated_by_path_gives_its_run_s_own_numbers(tmp_path):
    run_dir = tmp_path / "trained"
    small = (*SMALL[:-1], "eval.tasks=[mcqu]", "trainer.max_steps=3")
    trained = cli("train.py", *small, f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    out = tmp_path / "by-path"
    result = cli("-m", "medinject.eval", "--model", record["model"]["path"], "--adapter", str(run_dir / "adapter"), "--out", str(out), *small)
    assert result.returncode == 0, result.stderr[-3000:]
    other = json.loads((out / "results.json").read_text())
    assert other["model"]["adapter"] == str(run_dir / "adapter") and other["model"]["quantization"] == "nf4"
    evaluated = {k: v for k, v in other["metrics"].items() if k.startswith("eval/")}
    assert evaluated == {k: v for k, v in record["metrics"].items() if k.startswith("eval/")}
    assert [p["output_constrained"] for p in _predictions(out)] == [p["output_constrained"] for p in _predictions(run_dir)]
