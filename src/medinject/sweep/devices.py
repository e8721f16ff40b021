"""What a sweep's launcher can run, decided before any job starts.

* SLURM: the job script asks for `trainer.devices` GPUs and as many tasks per node, so that number must
  be fixed (`config.device_count`); -1 or "auto" is refused in one line instead of an invalid sbatch.
* Several processes per job (DDP) need a launcher that starts one task per device: SLURM. On the basic
  and local launchers Lightning would start the other ranks itself by re-running the command line
  (`_SubprocessScriptLauncher`), which for `-m` is the whole sweep again, and under submitit is
  submitit's entry point with arguments it rejects. Refused in one line.
* The local launcher (submitit's local executor) starts every job of a batch at once and makes GPUs
  0..n-1 visible to each. Here each batch holds at most as many jobs as the machine has GPUs for them,
  and each job is told which of those GPUs are its own (`trainer.local_gpus`), so no two jobs share a
  card. (submitit's local executor numbers GPUs from 0 whatever CUDA_VISIBLE_DEVICES the sweep was
  started with.)
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from medinject.config import device_count
from medinject.util.cluster import cuda_device_count
from medinject.util.errors import UserError

GPU_ACCELERATORS = ("gpu", "cuda")


def launcher_kind(config: DictConfig) -> str:
    """slurm, local (submitit's local executor) or basic (Hydra's own, in-process)."""
    target = str(config.hydra.launcher.get("_target_", ""))
    if "SlurmLauncher" in target:
        return "slurm"
    if "LocalLauncher" in target:
        return "local"
    return "basic"


def processes_per_job(trainer: DictConfig) -> int:
    """Processes Lightning starts for one run: devices per node x nodes."""
    try:
        devices = device_count(trainer.devices)
    except UserError:  # -1 / "auto": every device of the machine
        if str(trainer.accelerator) in GPU_ACCELERATORS:
            devices = max(cuda_device_count(), 1)
        else:
            devices = 1  # Lightning's CPU accelerator: "auto" is one process
    return devices * int(trainer.num_nodes)


def check_launcher(config: DictConfig) -> None:
    """One line, before any job is launched, when the launcher cannot run the sweep's jobs as configured."""
    kind = launcher_kind(config)
    try:
        OmegaConf.to_container(config.hydra.launcher, resolve=True)
    except InterpolationResolutionError as err:
        cause = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        raise UserError(str(cause) if cause else f"hydra.launcher: {str(err).splitlines()[0]}") from None
    if kind != "slurm" and processes_per_job(config.trainer) > 1:
        raise UserError(
            f"trainer.devices={config.trainer.devices} (x trainer.num_nodes={config.trainer.num_nodes}) in a multirun on the {kind} launcher: "
            "Lightning would start each extra rank by re-running this whole command; use hydra/launcher=slurm (one task per device), "
            "or run each configuration without -m"
        )


@dataclass(frozen=True)
class GpuPlan:
    jobs_at_once: int  # the launcher's batch size
    per_job: int  # GPUs each job trains on

    def gpus(self, position: int) -> list[int]:
        """The GPUs of the job at `position` in its batch."""
        start = position * self.per_job
        return list(range(start, start + self.per_job))


def local_gpu_plan(config: DictConfig, visible_gpus: int | None = None) -> GpuPlan | None:
    """On the local launcher with a GPU trainer: how many jobs run at once and on which GPUs (None
    otherwise). `visible_gpus`: the GPUs the sweep's own process sees (what submitit's local executor
    hands out), counted here when not given. Refuses a job that needs more GPUs than the machine has."""
    if launcher_kind(config) != "local" or str(config.trainer.accelerator) not in GPU_ACCELERATORS:
        return None
    if visible_gpus is None:
        visible_gpus = cuda_device_count()
    per_job = processes_per_job(config.trainer)
    if visible_gpus < per_job:
        raise UserError(f"trainer.devices={config.trainer.devices}: each job needs {per_job} GPU(s) and this machine has {visible_gpus}")
    return GpuPlan(jobs_at_once=visible_gpus // per_job, per_job=per_job)

