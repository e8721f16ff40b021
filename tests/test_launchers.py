"""What each launcher is asked to run, checked before anything is launched: SLURM scripts ask for a
fixed number of devices and tasks, DDP is refused where Lightning would re-run the whole sweep in every
rank, and the local launcher never puts two jobs on one GPU."""

import subprocess
import sys

import pytest
from conftest import CONF, ROOT, compose_cfg
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from medinject.sweep.devices import check_launcher, local_gpu_plan
from medinject.util.errors import UserError


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp/unused", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("devices,tasks", [("2", 2), ("[0,1,2]", 3), ("'0,1'", 2), ("1", 1)])
def test_slurm_asks_for_as_many_tasks_and_gpus_as_the_trainer_names(devices, tasks):
    cfg = _cfg("trainer=ddp", f"trainer.devices={devices}", "hydra/launcher=slurm")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == tasks
    assert isinstance(launcher["tasks_per_node"], int)


@pytest.mark.parametrize("devices", ["-1", "auto"])
def test_slurm_refuses_a_device_count_only_the_node_knows(devices):
    with pytest.raises(UserError, match=rf"^trainer.devices={devices}: a cluster job asks for a fixed number"):
        check_launcher(_cfg("trainer=ddp", f"trainer.devices={devices}", "hydra/launcher=slurm"))


@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_ddp_in_a_multirun_is_refused_where_lightning_would_rerun_the_sweep(launcher):
    with pytest.raises(UserError, match=rf"trainer.devices=2 .* on the {launcher} launcher: Lightning would start each extra rank"):
        check_launcher(_cfg("trainer=ddp", "trainer.devices=2", f"hydra/launcher={launcher}"))
    check_launcher(_cfg("trainer=ddp", "trainer.devices=2", "hydra/launcher=slurm"))  # one task per device: fine
    check_launcher(_cfg("trainer=gpu", f"hydra/launcher={launcher}"))  # one process per job: fine


def test_the_local_launcher_gives_each_job_its_own_gpu_and_runs_no_more_jobs_than_gpus():
    plan = local_gpu_plan(_cfg("trainer=gpu", "hydra/launcher=local"), visible_gpus=4)
    assert plan.jobs_at_once == 4 and [plan.gpus(k) for k in range(4)] == [[0], [1], [2], [3]]
    plan = local_gpu_plan(_cfg("trainer=gpu", "trainer.devices=2", "trainer.strategy=auto", "hydra/launcher=local"), visible_gpus=5)
    assert plan.jobs_at_once == 2 and plan.gpus(1) == [2, 3]
    assert local_gpu_plan(_cfg("trainer=cpu", "hydra/launcher=local"), visible_gpus=4) is None
    with pytest.raises(UserError, match="each job needs 1 GPU.* this machine has 0"):
        local_gpu_plan(_cfg("trainer=gpu", "hydra/launcher=local"), visible_gpus=0)


def test_a_job_trains_on_the_gpus_the_sweeper_gave_it():
    from medinject.train.fit import trainer_arguments

    cfg = _cfg("trainer=gpu", "trainer.local_gpus=[3]")
    assert trainer_arguments(cfg)["devices"] == [3]
    assert trainer_arguments(_cfg("trainer=gpu"))["devices"] == 1


def test_the_sweep_command_refuses_ddp_on_the_basic_launcher_in_one_line_before_any_job(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=smoke", "trainer.strategy=ddp", "trainer.devices=2", "data=native,synthetic",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("medinject: error: trainer.devices=2") and "basic launcher" in last
    assert not list((tmp_path / "sweep").glob("*/results.json"))


def test_cpu_threads_override_the_allocation_and_are_range_checked(monkeypatch):
    """trainer.cpu_threads sets torch's thread count (two one-thread jobs share two cores); unset, a
    SLURM allocation smaller than the machine does; a value below 1 is refused naming the key."""
    import torch

    from medinject.config import check_settings
    from medinject.train.fit import _fit_threads

    before = torch.get_num_threads()
    try:
        _fit_threads(1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        _fit_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match=r"trainer.cpu_threads.*integer >= 1"):
        check_settings(compose_cfg("trainer.cpu_threads=0"))


def test_slurm_tasks_are_matched_to_jobs_across_arrays_and_only_this_invocations(tmp_path):
    """A mixture search submits its design and each round as arrays of their own, each numbered from 0:
    job k is the k-th task across this invocation's arrays, in submission order; the arrays of an
    earlier invocation of the same sweep (a rerun) are left out."""
    import os
    import time

    from medinject.sweep.status import array_tasks

    sweep = tmp_path / "sweep"
    folders = sweep / ".submitit"
    old = time.time() - 3600
    for name in ("41_0", "41_1"):  # the previous invocation's design
        (folders / name).mkdir(parents=True)
        os.utime(folders / name, (old, old))
    started = time.time() - 60
    for name in ("57_2", "57_0", "57_1", "58_0", "58_1", "103_0", "12345"):  # design, round 1, round 2, a local job
        (folders / name).mkdir(parents=True)
    assert array_tasks(sweep, since=started) == {0: "57_0", 1: "57_1", 2: "57_2", 3: "58_0", 4: "58_1", 5: "103_0"}
    assert array_tasks(sweep)[0] == "41_0"  # without the start time every array counts
