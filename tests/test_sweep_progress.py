"""A sweep you can watch: one progress line per ended job on the local launcher (submitit, one process
per job), and `python -m medinject.sweep.status` naming each job's state from another process."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, cli

JOB = ("experiment=smoke", "logger=wandb", "logger.wandb.mode=offline", "trainer.enable_progress_bar=false",
       "trainer.max_steps=3", "trainer.log_every_n_steps=1", "eval.limit=2", "eval.tasks=[mcqu]")


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """base, native and a config whose only source file does not exist, on the local launcher."""
    root = tmp_path_factory.mktemp("progress")
    extra = root / "conf"
    (extra / "data").mkdir(parents=True)
    (extra / "data" / "broken.yaml").write_text(
        "defaults:\n  - /source@sources.native: native\n\nname: broken\nsources:\n  native:\n    format: jsonl\n"
        f"    files: [{root}/no-such-file.jsonl]\n"
    )
    sweep_dir = root / "sweep"
    result = subprocess.run(
        [sys.executable, "train.py", f"--config-dir={extra}", "-m", "hydra/launcher=local", "data=base,native,broken", *JOB,
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ),
    )
    return sweep_dir, result


@pytest.mark.slow
def test_a_local_launcher_sweep_logs_one_progress_line_per_ended_job(local_sweep):
    sweep_dir, result = local_sweep
    assert result.returncode == 1, result.stderr[-3000:]  # one job failed: the sweep says so
    lines = [line for line in result.stderr.splitlines() if line.startswith("sweep progress: ")]
    assert len(lines) == 3, result.stderr[-3000:]
    planned = json.loads((sweep_dir / "sweep_jobs.json").read_text())["jobs"]  # written before launching
    for job in planned:
        name = Path(job["run_dir"]).name
        assert sum(f" {name} " in line for line in lines) == 1, name
    (failed,) = [line for line in lines if " broken-s42-" in line]
    assert " failed" in failed and "file not found" in failed
    for line in lines:
        assert " completed in " in line or " failed" in line
    assert [re.search(r"(\d)/3 ended", line)[1] for line in lines] == ["1", "2", "3"]
    assert lines[-1].endswith("3/3 ended: 2 completed, 1 failed, 0 pending")
    # an ETA on every line once a job has run to its end while others are pending: mean duration x rounds left
    durations_known = False
    for line in lines:
        durations_known |= re.search(r" (completed|failed) in \d", line.split(";")[0]) is not None
        if durations_known and int(re.search(r"(\d+) pending", line)[1]):
            assert re.search(r"; ETA \d+ s \(mean \d+ s per job, [12] at a time\)$", line), line


@pytest.mark.slow
def test_status_names_a_failed_an_unfinished_and_a_running_job(local_sweep):
    sweep_dir, _ = local_sweep
    jobs = {Path(job["run_dir"]).name.split("-")[0]: Path(job["run_dir"]) for job in json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]}
    (jobs["native"] / "results.json").unlink()  # what a job killed before its end leaves: files, no result
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}
    (jobs["base"] / ".lock.owner").write_text(json.dumps(owner))  # a live process holds this one
    result = cli("-m", "medinject.sweep.status", str(sweep_dir), timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{sweep_dir}: 3 jobs: 1 failed, 1 running, 1 unfinished"
    by_name = {name: next(line for line in lines[1:] if f"  {run_dir.name}  " in line) for name, run_dir in jobs.items()}
    state = {name: line.split("  ")[2] for name, line in by_name.items()}
    assert state == {"broken": "failed", "native": "unfinished", "base": "running"}
    assert "file not found" in by_name["broken"]
    step, loss = re.search(r"last logged step (\d+), loss (\d+\.\d+)", by_name["native"]).groups()  # read from the W&B run file
    assert int(step) >= 1 and float(loss) > 0
    (jobs["base"] / ".lock.owner").write_text(json.dumps({**owner, "pid": 2**22 + 12345}))  # its process is gone
    again = cli("-m", "medinject.sweep.status", str(sweep_dir), timeout=120)
    assert "1 completed, 1 failed, 1 unfinished" in again.stdout.splitlines()[0]


def test_the_last_loss_comes_from_the_csv_logger_too(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from medinject.sweep.status import job_state

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step, loss in [(1, 2.5), (2, 2.25), (3, 2.125)]:
        logger.log_metrics({"train/loss": loss, "train/lr": 1e-3}, step=step)
    logger.log_metrics({"probe": 1.0}, step=4)  # a row without the loss
    logger.save()
    state = job_state(0, tmp_path)
    assert (state.state, state.step, state.loss) == ("unfinished", 3, 2.125)


def test_status_of_a_folder_with_no_sweep_is_one_line(tmp_path):
    result = cli("-m", "medinject.sweep.status", str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"medinject: error: {tmp_path}: no sweep here (no sweep_summary.json, no sweep_jobs.json and no run directory below it)"
