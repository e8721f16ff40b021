"""The seven-config sweep as one job array on a real SLURM cluster (slurm/start.sh; .ci/run starts it)."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import CONF, ROOT

pytestmark = pytest.mark.skipif(
    not os.environ.get("SLURM_CONF"), reason="no SLURM cluster: run `bash slurm/start.sh` and export the SLURM_CONF it prints"
)


def test_provenance_sweep_runs_as_one_job_array_of_seven_completed_tasks(tmp_path):
    sweep_dir = tmp_path / "sweep"  # a fresh submitit folder per test run: job ids restart after a purge
    result = subprocess.run(
        [
            sys.executable, "train.py", "-m", "experiment=[provenance_sweep,smoke]", "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=20", "logger=csv", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configs = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    assert sorted(r["data"]["config"] for r in results) == configs
    assert all(r["status"] == "completed" for r in results)

    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    array_ids = {t.split("_")[0] for t in tasks}
    assert len(array_ids) == 1 and sorted(int(t.split("_")[1]) for t in tasks) == list(range(7))
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
    assert sorted(states) == sorted(f"{array_id}_{i}" for i in range(7))
    assert set(states.values()) == {"COMPLETED"}
