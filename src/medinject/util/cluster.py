"""Which process this is, as Lightning will see it: the cluster environment its Trainer chooses, asked
before the Trainer exists (the run lock, the results file and the 4-bit load happen earlier).

Lightning picks the first environment that detects itself, TorchElastic (torchrun) first, then SLURM,
LSF and MPI, else its own (`AcceleratorConnector._choose_and_init_cluster_environment`). Inside an
interactive SLURM allocation (`salloc`, `srun --pty`) SLURM does not detect itself
(`SLURMEnvironment._is_slurm_interactive_mode`): Lightning launches the ranks itself, and its children
inherit the allocation's SLURM_PROCID=0; their rank is in LOCAL_RANK and NODE_RANK, which
Lightning's own environment reads.
"""

from __future__ import annotations

import functools
import glob
import os

# What a launcher or a job manager sets in the processes it starts (torchrun, Lightning's launcher, a
# SLURM job or step, LSF, mpirun); without any of these, every environment Lightning knows detects
# nothing and the process is alone (rank 0). Checked first so that a refused setting does not wait for
# torch to import. (SLURM_CONF and the like, set on a login node, are not among them.)
_LAUNCHED_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS",
                  "LSB_JOBID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK")


def _alone() -> bool:
    return not any(v in os.environ for v in _LAUNCHED_VARS)


def cluster_environment():
    """The `ClusterEnvironment` Lightning's Trainer would choose in this process."""
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for environment in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if environment.detect():
            return environment()
    return LightningEnvironment()


def is_main_process() -> bool:
    """Rank 0 of the run: the process that takes the run lock, saves, evaluates and writes results."""
    if _alone():
        return True
    from lightning.fabric.plugins.environments import LightningEnvironment

    environment = cluster_environment()
    if isinstance(environment, LightningEnvironment):  # its global rank is set later, by the strategy
        return environment.node_rank() == 0 and environment.local_rank() == 0
    return environment.global_rank() == 0


def local_rank() -> int:
    """This process's rank on its node: the GPU it trains on (cuda:<local rank>)."""
    return cluster_environment().local_rank()


def gpu_driver_loaded() -> bool:
    return (os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))
            or os.path.exists("/dev/kfd"))  # /dev/kfd: AMD's ROCm, which torch also calls cuda


@functools.cache
def cuda_device_count() -> int:
    """The CUDA devices this process can use (CUDA_VISIBLE_DEVICES applied); torch is imported only
    where a GPU driver is loaded."""
    if not gpu_driver_loaded():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
