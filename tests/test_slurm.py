"""The seven-config sweep as one job array on a real SLURM cluster (slurm/start.sh; .ci/run starts it)."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import CONF, RESUMABLE, ROOT

SMALL_JOBS = ("hydra/launcher=slurm_onenode",)  # the preset that fits the one-node cluster of slurm/

pytestmark = pytest.mark.skipif(
    not os.environ.get("SLURM_CONF"), reason="no SLURM cluster: run `bash slurm/start.sh` and export the SLURM_CONF it prints"
)


def test_provenance_sweep_runs_as_one_job_array_of_seven_completed_tasks(tmp_path):
    sweep_dir = tmp_path / "sweep"  # a fresh submitit folder per test run: job ids restart after a purge
    result = subprocess.run(
        [
            sys.executable, "train.py", "-m", "experiment=[provenance_sweep,smoke]", *SMALL_JOBS, "logger=csv", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configs = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    assert sorted(r["data"]["config"] for r in results) == configs
    assert all(r["status"] == "completed" for r in results)
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": len(configs), "skipped": 0, "failed": 0, "missing": 0}
    progress = [line for line in result.stderr.splitlines() if line.startswith("sweep progress: ")]  # one line per ended job
    assert len(progress) == len(configs) and progress[-1].endswith(f"{len(configs)}/{len(configs)} ended: {len(configs)} completed, 0 failed, 0 pending")

    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    array_ids = {t.split("_")[0] for t in tasks}
    assert len(array_ids) == 1 and sorted(int(t.split("_")[1]) for t in tasks) == list(range(len(configs)))
    (array_id,) = array_ids
    # submitit returns once every task has written its result; SLURM may still be closing the last
    # tasks, so wait (bounded) until accounting has a final state for all seven.
    deadline = time.monotonic() + 120
    while True:
        rows = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array_id, "-o", "JobID,State"], capture_output=True, text=True, check=True).stdout
        states = dict(line.split("|") for line in rows.strip().splitlines())
        if not {"RUNNING", "PENDING", "COMPLETING"} & set(states.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sorted(states) == sorted(f"{array_id}_{i}" for i in range(len(configs)))
    assert set(states.values()) == {"COMPLETED"}


def test_a_requeued_job_resumes_from_its_checkpoint_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    # The reference runs outside SLURM with the job's one CPU (same threads, same float sums).
    reference_dir = tmp_path / "reference"
    reference = subprocess.Popen(
        [sys.executable, "train.py", *RESUMABLE, f"hydra.run.dir={reference_dir}"], cwd=ROOT,
        env={**os.environ, "SLURM_CPUS_PER_TASK": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    sweep_dir = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "train.py", "-m", *RESUMABLE, *SMALL_JOBS, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 600
    while not list(sweep_dir.glob("*/checkpoints/step=*.ckpt")):
        assert sweep.poll() is None, sweep.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the job wrote no checkpoint in 600 s"
        time.sleep(0.1)
    (task,) = [p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)]
    subprocess.run(["scontrol", "requeue", task], check=True, capture_output=True)

    assert sweep.wait(timeout=900) == 0, sweep.stderr.read()[-3000:]
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-3000:]
    (run_dir,) = [p.parent for p in sweep_dir.glob("*/results.json")]
    resumed = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((reference_dir / "results.json").read_text())
    assert resumed["status"] == expected["status"] == "completed"
    assert 4 <= resumed["train"]["resumed_from_step"] < 16  # it continued from a checkpoint, mid-training
    for name, value in expected["metrics"].items():
        assert resumed["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # SLURM's own record: the task ran twice under one id, the first attempt ending REQUEUED.
    history = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-j", task, "-o", "JobID,State"], capture_output=True, text=True, check=True).stdout
    assert "REQUEUED" in history, history


def test_a_sweep_slurm_can_never_start_stops_with_one_line(tmp_path):
    """The `slurm` preset's defaults (64 GB, 8 CPUs per task) exceed the one-node cluster: the array
    would stay pending for ever (PartitionConfig). The sweep says so within a couple of minutes."""
    sweep_dir = tmp_path / "sweep"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=smoke", "data=native,synthetic", "hydra/launcher=slurm",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=100000", "logger=none", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.monotonic() - started < 150
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("medinject: error: SLURM will never start job ") and "hydra.launcher." in last, last
    assert re.search(r"reason (PartitionConfig|ReqNodeNotAvail)", last), last
    ids = sorted({p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)})
    assert ids
    queue = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True).stdout
    assert queue.strip() == "", queue  # cancelled, not left pending
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["status"] == "failed" and summary["counts"]["completed"] == 0
