"""Every command answers a read-only output directory with one line naming it and exit status 2: no
traceback, nothing claimed done. The directory is made read-only the way root cannot write it either
(a read-only bind mount in a private mount namespace, conftest.cli); each command's inputs are real
files, written as medinject writes them (the report's through test_mixture.write_run)."""

import json

import numpy as np
from conftest import cli
from test_mixture import write_run

ROFS = "Read-only file system"


def _refused(result, where) -> None:
    """One line on stderr naming `where` as read-only, exit status 2, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith(f"medinject: error: {where}") and lines[-1].endswith(ROFS), lines[-1]


def _sweep(folder):
    """A sweep of two completed runs (native, synthetic), one seed each."""
    rng = np.random.default_rng(0)
    for config in ("native", "synthetic"):
        write_run(folder / f"{config}-s1", 1, {config: 100}, rng.uniform(0, 1, 20), config=config)
    return folder


def test_train_refuses_a_read_only_run_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _refused(cli("train.py", "experiment=smoke", "logger=none", f"hydra.run.dir={out}", read_only=out), out)
    assert list(out.iterdir()) == []


def test_a_sweep_refuses_a_read_only_sweep_directory(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    _refused(cli("-m", "medinject", "train", "-m", "experiment=smoke", "logger=none", f"hydra.sweep.dir={out}", read_only=out), out)


def test_prepare_refuses_a_read_only_output_directory(tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    _refused(cli("-m", "medinject", "prepare", "experiment=smoke", f"hydra.run.dir={out}", read_only=out), out)


def test_eval_refuses_a_read_only_run_directory_before_evaluating(tmp_path):
    """Re-evaluation replaces the run's predictions and record: a run directory it cannot write is
    refused before the model is loaded (here a completed base-model run: no adapter to load)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"status": "completed", "model": {"adapter": None}, "metrics": {}, "timing": {}}))
    (run / "config.yaml").write_text("seed: 1\n")
    _refused(cli("-m", "medinject", "eval", str(run), read_only=run), run)


def test_eval_of_any_model_refuses_a_read_only_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _refused(cli("-m", "medinject.eval", "--model", str(tmp_path / "model"), "--out", str(out), "experiment=smoke", read_only=out), out)


def test_report_refuses_a_read_only_out_before_the_bootstrap(tmp_path):
    sweep, out = _sweep(tmp_path / "sweep"), tmp_path / "report"
    out.mkdir()
    _refused(cli("-m", "medinject", "report", str(sweep), "--out", str(out), read_only=out), out)
    result = cli("-m", "medinject.report", str(sweep), read_only=sweep)  # the sweep dir itself, the default
    _refused(result, sweep)


def test_review_export_and_import_refuse_a_read_only_folder(tmp_path):
    sweep, out = _sweep(tmp_path / "sweep"), tmp_path / "review"
    out.mkdir()
    _refused(cli("-m", "medinject", "review", "export", str(sweep), "--out", str(out), read_only=out), out)
    rated = tmp_path / "rated"
    rated.mkdir()
    (rated / "key.csv").write_text("uid,judge,rougeL\nR00001,1,0.5\n")
    (rated / "ratings.csv").write_text("uid,rating\nR00001,1\n")
    _refused(cli("-m", "medinject.report.review", "import", str(rated / "ratings.csv"), read_only=rated), rated / "agreement.json")


def test_dashboard_refuses_a_read_only_sweep_directory(tmp_path):
    sweep = _sweep(tmp_path / "sweep")
    _refused(cli("-m", "medinject", "dashboard", str(sweep), read_only=sweep), sweep / "dashboard.json")


def test_planted_refuses_a_read_only_output_folder(tmp_path):
    out = tmp_path / "planted"
    out.mkdir()
    _refused(cli("-m", "medinject", "planted", str(out), read_only=out), out)
    assert list(out.iterdir()) == []


def test_lm_eval_tasks_refuses_a_read_only_task_folder(tmp_path):
    out = tmp_path / "tasks"
    out.mkdir()
    _refused(cli("-m", "medinject", "lm-eval-tasks", str(out), "experiment=smoke", read_only=out), out)


def test_status_writes_nothing_and_reads_a_read_only_sweep(tmp_path):
    """The status command has no output directory: on a read-only sweep it still says how each job ended."""
    sweep = _sweep(tmp_path / "sweep")
    result = cli("-m", "medinject", "status", str(sweep), read_only=sweep)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 jobs: 2 completed" in result.stdout
