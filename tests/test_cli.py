"""The real CLI (`python train.py ...` in a subprocess), on the production configs shrunk by experiment=smoke."""

import json
import shutil
from pathlib import Path

from conftest import CONF, ROOT, SWEEP_SEEDS, cli

SAMPLE = ROOT / "src" / "medinject" / "sample_data"

SECRET_HF = "hf_plantedSecretValue123456789"
SECRET_WANDB = "0123456789abcdefplantedwandbkey0123456789"


def test_smoke_run_through_the_cli_with_wandb_offline_leaks_no_secret(tmp_path):
    run_dir = tmp_path / "run"
    # a test item whose text holds the credential: it reaches prompts, predictions and the W&B table
    tests = tmp_path / "native_test"
    shutil.copytree(SAMPLE / "native" / "test", tests)
    rows = (tests / "mcqu.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(rows[0])
    first["instruction"] = f"{first['instruction']} (ref. {SECRET_HF})"
    (tests / "mcqu.jsonl").write_text("\n".join([json.dumps(first, ensure_ascii=False), *rows[1:]]) + "\n", encoding="utf-8")
    result = cli(
        "train.py",
        "experiment=smoke",
        "logger=wandb",
        "logger.wandb.mode=offline",
        "logger.wandb.tags=[${oc.env:HF_TOKEN}]",  # a config that tries to carry a credential
        f"eval.test_sets.native.files=[{tests}]",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        env={"HF_TOKEN": SECRET_HF, "WANDB_API_KEY": SECRET_WANDB},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["metrics"]["eval/native/mcqu/n"] == 8
    assert results["devices"] == {"train": "cpu", "eval": "cpu"}
    predictions = (run_dir / "predictions.jsonl").read_text(encoding="utf-8")
    assert "(ref. ***)" in predictions  # the item was evaluated, its credential masked
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].rglob("*.wandb"))

    for secret in (SECRET_HF, SECRET_WANDB):
        assert secret not in result.stdout + result.stderr
        for path in run_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    assert "***" in (run_dir / "config.yaml").read_text()


def test_bad_data_path_is_one_line_nonzero_exit_and_no_success_claimed(tmp_path):
    run_dir = tmp_path / "run"
    result = cli("train.py", "experiment=smoke", "logger=none", f"data.sources.native.files=[{tmp_path}/nope.jsonl]", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"medinject: error: data.sources.native.files: file not found: {tmp_path}/nope.jsonl"
    assert "Traceback" not in result.stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"


def test_seven_config_sweep_with_the_basic_launcher(provenance_sweep, tmp_path):
    sweep_dir = provenance_sweep  # `python train.py -m experiment=provenance_sweep` on the default launcher (conftest)
    expected = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert sorted(r["data"]["config"] for r in results) == sorted(expected * len(SWEEP_SEEDS))
    for r in results:
        assert r["status"] == "completed"
        if r["data"]["config"] == "base":  # the base model: evaluated on the same items, trained on nothing
            assert r["data"]["n_examples"] == 0 and r["model"]["adapter"] is None and r["metrics"]["train/optimizer_steps"] == 0
            assert not (Path(r["run_dir"]) / "adapter").exists() and not (Path(r["run_dir"]) / "checkpoints").exists()
            assert "eval/translated/mcq/hamming" in r["metrics"]
            continue
        assert r["data"]["n_examples"] == 24  # equal budget (mix.budget=24): same size, different provenance
        assert sorted(r["data"]["counts"]) == sorted(r["data"]["config"].split("+"))
        assert "eval/translated/mcq/hamming" in r["metrics"]
        assert Path(r["run_dir"]).parent == sweep_dir

    def items(config: str) -> list:
        (run,) = [r for r in results if r["data"]["config"] == config and r["data"]["seed"] == SWEEP_SEEDS[0]]
        lines = (Path(run["run_dir"]) / "predictions.jsonl").read_text().splitlines()
        return [(p["test_set"], p["task"], p["id"], p["prompt"]) for p in map(json.loads, lines)]

    assert items("base") == items("native")  # the same test items, prompted the same way
    # the seven configurations against the untuned base model
    out = tmp_path / "against_base"
    report = cli("-m", "medinject.report", str(sweep_dir), "--baseline", "base", "--resamples", "200", "--out", str(out), timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    import csv

    rows = list(csv.DictReader((out / "summary.csv").open()))
    metric = "eval/native/mcqu/em_constrained"
    compared = {row["config"] for row in rows if row["metric"] == metric and row["diff"] != ""}
    assert compared == set(expected) - {"base"} and all(row["baseline"] == "base" for row in rows)
    assert [row["diff"] for row in rows if row["config"] == "base" and row["metric"] == metric] == [""]
