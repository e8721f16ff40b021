"""Surviving what clusters do to jobs, through the real CLI: a run killed with SIGKILL mid-training and
rerun with the same command ends with the metrics of a run that was never interrupted; a rerun of a
finished sweep trains nothing; one failing config neither stops nor hides the others."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONF, RESUMABLE, ROOT, cli


def _metrics(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed", results.get("error")
    return results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = cli("train.py", *RESUMABLE, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return _metrics(run_dir)


def _kill_after_first_checkpoint(args: list[str], checkpoints: Path) -> None:
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("step=*.ckpt")):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_run_killed_mid_training_resumes_to_the_metrics_of_an_uninterrupted_one(tmp_path, uninterrupted):
    run_dir = tmp_path / "killed"
    args = [*RESUMABLE, f"hydra.run.dir={run_dir}"]
    _kill_after_first_checkpoint(args, run_dir / "checkpoints")
    assert not (run_dir / "results.json").exists()  # nothing claims the killed run finished

    result = cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = _metrics(run_dir)
    assert 4 <= resumed["train"]["resumed_from_step"] < 16  # it really continued mid-training
    assert uninterrupted["train"]["resumed_from_step"] is None
    assert resumed["metrics"].keys() == uninterrupted["metrics"].keys()
    for name, value in uninterrupted["metrics"].items():
        assert resumed["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_the_run_directory_is_named_after_the_config_not_the_clock(tmp_path):
    outputs = tmp_path / "outputs"
    first = cli("train.py", *RESUMABLE, "trainer.max_steps=1", "eval.limit=1", f"hydra.run.dir={outputs}/" + "${medinject.run_name:}")
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = outputs.iterdir()
    assert run_dir.name.startswith("native-s42-")
    again = cli("train.py", *RESUMABLE, "trainer.max_steps=1", "eval.limit=1", f"hydra.run.dir={outputs}/" + "${medinject.run_name:}")
    assert again.returncode == 0 and "already completed; skipped" in again.stdout + again.stderr
    other = cli("train.py", *RESUMABLE, "trainer.max_steps=1", "eval.limit=1", "optim.lr=1e-3", f"hydra.run.dir={outputs}/" + "${medinject.run_name:}")
    assert other.returncode == 0, other.stderr[-3000:]
    assert len(list(outputs.iterdir())) == 2  # another learning rate is another run


@pytest.fixture(scope="module")
def broken_config_dir(tmp_path_factory) -> Path:
    """An eighth data config whose only source file does not exist (found by `data=glob(*)`)."""
    extra = tmp_path_factory.mktemp("extra_conf")
    (extra / "data").mkdir()
    (extra / "data" / "broken.yaml").write_text(
        "defaults:\n  - /source@sources.native: native\n\nname: broken\nsources:\n  native:\n    format: jsonl\n"
        f"    files: [{extra}/no-such-file.jsonl]\n"
    )
    return extra


def test_one_failing_config_does_not_stop_the_sweep_and_a_rerun_trains_nothing(tmp_path, broken_config_dir):
    sweep_dir = tmp_path / "sweep"
    args = [f"--config-dir={broken_config_dir}", "-m", "experiment=[provenance_sweep,smoke]", "logger=csv",
            "trainer.enable_progress_bar=false", "trainer.max_steps=2", "eval.limit=2", "eval.tasks=[mcqu]",
            f"hydra.sweep.dir={sweep_dir}"]
    first = cli("train.py", *args)
    assert first.returncode != 0  # the command says the sweep did not fully succeed
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    status = {job["data"]: job["status"] for job in summary["jobs"]}
    configs = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
    assert status == {**{name: "completed" for name in configs}, "broken": "failed"}
    (failed,) = [job for job in summary["jobs"] if job["status"] == "failed"]
    assert "no-such-file.jsonl" in failed["error"] and "file not found" in failed["error"]
    assert summary["counts"] == {"completed": len(configs), "skipped": 0, "failed": 1, "missing": 0}
    assert summary["status"] == "failed"
    for job in summary["jobs"]:
        record = json.loads((Path(job["run_dir"]) / "results.json").read_text())
        assert record["status"] == job["status"]

    def written(run_dir: Path) -> dict:
        checkpoints = list((run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").is_dir() else []  # data=base trains nothing
        return {p.name: p.stat().st_mtime_ns for p in [run_dir / "results.json", *checkpoints]}

    done = {job["run_dir"]: written(Path(job["run_dir"])) for job in summary["jobs"] if job["status"] == "completed"}
    second = cli("train.py", *args)
    assert second.returncode != 0
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 0, "skipped": len(configs), "failed": 1, "missing": 0}
    for run_dir, files in done.items():  # nothing of a completed run was trained or written again
        assert written(Path(run_dir)) == files
