"""Registration with Hydra and OmegaConf (`register`, called by the entry points), and where the
configs and the bundled sample data are."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from medinject.config.checks import device_count
from medinject.config.identity import run_name
from medinject.config.schema import RunConfig


def conf_dir() -> str:
    """The `conf/` folder for entry points other than train.py: $MEDINJECT_CONF, ./conf, or the checkout's."""
    if env := os.environ.get("MEDINJECT_CONF"):
        return str(Path(env).resolve())
    if (Path.cwd() / "conf" / "train.yaml").is_file():
        return str(Path.cwd() / "conf")
    return str(Path(__file__).resolve().parents[3] / "conf")


def sample_data_dir() -> str:
    return str(files("medinject") / "sample_data")


def _machine_gpus(accelerator) -> int:
    from medinject.util.cluster import cuda_device_count

    return cuda_device_count() if str(accelerator) in ("gpu", "cuda") else 0


def register() -> None:
    """Register the schema with Hydra's ConfigStore (as `run_schema`, which `conf/train.yaml` lists
    first in its defaults) and medinject's resolvers. Every entry point that composes a config calls
    it before composing (tests: conftest); importing the package registers nothing. Safe to call
    more than once. Hydra hands both to the jobs it launches (`Singleton.get_state`)."""
    if not OmegaConf.has_resolver("medinject.sample_data"):
        OmegaConf.register_new_resolver("medinject.sample_data", sample_data_dir)
    if not OmegaConf.has_resolver("medinject.gpus"):
        # GPUs per node for the SLURM and local launchers: the trainer's devices on GPU, none on CPU
        OmegaConf.register_new_resolver(
            "medinject.gpus", lambda accelerator, devices: device_count(devices) if accelerator in ("gpu", "cuda") else 0
        )
    if not OmegaConf.has_resolver("medinject.machine_gpus"):
        # GPUs of this machine for the local launcher (each job then takes its own; sweep/devices.py)
        OmegaConf.register_new_resolver("medinject.machine_gpus", _machine_gpus)
    if not OmegaConf.has_resolver("medinject.tasks"):
        # tasks per node for the SLURM launcher: one per device, as Lightning's SLURM detection expects
        OmegaConf.register_new_resolver("medinject.tasks", device_count)
    if not OmegaConf.has_resolver("medinject.eval_backend"):
        # eval.backend's default: vLLM where the run trains on GPUs, transformers on the CPU
        OmegaConf.register_new_resolver("medinject.eval_backend", lambda accelerator: "vllm" if accelerator in ("gpu", "cuda") else "hf")
    if not OmegaConf.has_resolver("medinject.run_name"):
        # `${medinject.run_name:}` in hydra.run.dir / hydra.sweep.subdir; `_root_` is the whole job config
        OmegaConf.register_new_resolver("medinject.run_name", lambda *, _root_: run_name(_root_))
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
