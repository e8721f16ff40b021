"""Multi-process contracts that only CUDA would otherwise show: which process is rank 0 (as Lightning's
own cluster environment says, interactive SLURM allocations included), the GPU a 4-bit base is loaded
on, and the device of the tensor reduced across processes (NCCL takes CUDA tensors only)."""

import lightning as L
import pytest
import torch
from conftest import compose_cfg
from lightning.pytorch.strategies import SingleDeviceStrategy

from medinject.model.load import quantized_weights_device
from medinject.train.fit import summed_over_processes
from medinject.util.cluster import cluster_environment, is_main_process, local_rank

CLUSTER_VARS = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "NODE_RANK", "SLURM_PROCID", "SLURM_LOCALID",
                "SLURM_NTASKS", "SLURM_NODEID", "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES")

# an interactive allocation (salloc / srun --pty): Lightning launches the ranks, which inherit SLURM_PROCID=0
INTERACTIVE = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}
# a batch job with one task per GPU: SLURM starts the ranks
BATCH = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "medinject", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}
TORCHRUN = {"GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture
def env(monkeypatch):
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)

    def set_env(**values):
        for key, value in values.items():
            monkeypatch.setenv(key, str(value))

    return set_env


def _lightning_choice():
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return type(trainer._accelerator_connector.cluster_environment)


@pytest.mark.parametrize("case,main", [
    ({**INTERACTIVE, "LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # a child of Lightning's launcher
    ({**INTERACTIVE, "LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
    ({**INTERACTIVE}, True),  # the launching process itself
    ({**INTERACTIVE, "LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # rank 0 of the second node
    ({**BATCH, "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, False),
    ({**BATCH, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, True),
    ({**TORCHRUN, "RANK": "1", "LOCAL_RANK": "1", **INTERACTIVE}, False),  # torchrun inside an allocation
    ({**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0"}, True),
])
def test_rank_zero_is_decided_by_lightnings_cluster_environment(env, case, main):
    env(**case)
    assert type(cluster_environment()) is _lightning_choice()
    assert is_main_process() is main


def test_a_4bit_base_is_loaded_on_the_local_ranks_gpu(env):
    env(**INTERACTIVE, LOCAL_RANK=1)
    assert local_rank() == 1
    assert quantized_weights_device(compose_cfg("trainer=ddp").trainer) == "cuda:1"
    assert quantized_weights_device(compose_cfg("trainer=ddp", "trainer.devices=[2,3]").trainer) == "cuda:3"
    assert quantized_weights_device(compose_cfg("trainer=cpu").trainer) is None
    env(**BATCH, SLURM_PROCID=1, SLURM_LOCALID=1)
    assert quantized_weights_device(compose_cfg("trainer=ddp").trainer) == "cuda:1"


def test_the_count_reduced_across_processes_lives_on_the_strategys_root_device():
    strategy = SingleDeviceStrategy(device=torch.device("meta"))  # any device but the CPU shows where it was built
    summed = summed_over_processes(strategy, 3, 4)
    assert summed.device == strategy.root_device and summed.shape == (2,)
    cpu = summed_over_processes(SingleDeviceStrategy(device=torch.device("cpu")), 3, 4)
    assert cpu.tolist() == [3.0, 4.0]


def test_a_process_alone_is_rank_zero_without_importing_lightning(env):
    import subprocess
    import sys

    code = ("import sys; from medinject.util.cluster import is_main_process; "
            "assert is_main_process(); print('lightning' in sys.modules)")
    clean = {k: v for k, v in __import__("os").environ.items() if k not in CLUSTER_VARS and not k.startswith(("SLURM_", "OMPI_", "PMI"))}
    clean["SLURM_CONF"] = "/etc/slurm/slurm.conf"  # a login node's setting: not a job
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    assert type(cluster_environment()).__name__ == "LightningEnvironment" and is_main_process()
