"""What a run needs of this machine and of the model folder, checked before torch, Lightning,
transformers or peft is imported (they take seconds to import; a refusal should not):

- the devices the config asks for exist here (`trainer.accelerator`, `trainer.devices`, `eval.device`,
  `eval.judge.device`), each refusal saying what this machine has;
- `model.path` is a model folder with its `config.json` (or a hub id, found in the cache when the hub
  is offline), so a mistyped path is found before the data stage reads anything;
- `data.max_length` fits the model's context, read from that `config.json` (no weights loaded).

Torch is imported only where a CUDA device is asked for and an NVIDIA (or ROCm) driver is loaded: with
no driver there is no CUDA device, whatever torch would say.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medinject.util.cluster import cuda_device_count, gpu_driver_loaded
from medinject.util.errors import UserError

GPU_ACCELERATORS = ("gpu", "cuda")
# config.json fields that hold a model's context length, in the order transformers' configs use them
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_run_prerequisites(cfg: DictConfig) -> None:
    """Refuse, in one line naming the key, a device this machine lacks, a model folder that is not
    there, or a `data.max_length` the model cannot read."""
    check_devices(cfg)
    check_model_files(cfg)


# ------------------------------------------------------------------------------------------ devices

def available_devices() -> str:
    n = cuda_device_count()
    return ", ".join(["cpu", *(f"cuda:{i}" for i in range(n))])


def _no_gpu_reason() -> str:
    return "no NVIDIA driver is loaded" if not gpu_driver_loaded() else "torch sees no CUDA device"


def check_devices(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.accelerator)
    if accelerator not in ("cpu", "auto", *GPU_ACCELERATORS):  # what medinject trains on (Lightning knows more)
        raise UserError(f"trainer.accelerator: {accelerator!r} is not supported; allowed: cpu, gpu, cuda, auto; "
                        f"available: {available_devices()}")
    if accelerator in GPU_ACCELERATORS:
        n = cuda_device_count()
        if n == 0:
            raise UserError(f"trainer.accelerator: {accelerator!r} (trainer=gpu, trainer=ddp) needs a CUDA GPU, and this machine has "
                            f"none ({_no_gpu_reason()}); available: cpu (trainer=cpu)")
        devices = cfg.trainer.devices
        wanted = [int(d) for d in devices if str(d).isdigit()] if OmegaConf.is_list(devices) else None
        if isinstance(devices, int) and devices > n:
            raise UserError(f"trainer.devices: {devices} GPUs asked for, and this machine has {n}; available: {available_devices()}")
        if wanted and max(wanted) >= n:
            raise UserError(f"trainer.devices: GPU {max(wanted)} asked for, and this machine has {n}; available: {available_devices()}")
    _check_device("eval.device", cfg.eval.device)
    judge_device = cfg.eval.judge.device
    if judge_device != "auto":  # auto: transformers spreads the judge over every visible GPU
        _check_device("eval.judge.device", judge_device)


def _check_device(key: str, device: str | None) -> None:
    if device is None or device == "cpu":
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if match is None:
        raise UserError(f"{key}: {device!r} is not a device; allowed: null (the training device), cpu, cuda or cuda:<index>; "
                        f"available: {available_devices()}")
    n = cuda_device_count()
    index = int(match.group(1) or 0)
    if index >= n:
        have = f"no CUDA GPU ({_no_gpu_reason()})" if n == 0 else f"{n} CUDA GPU{'s' if n > 1 else ''}"
        raise UserError(f"{key}: {device!r} is not on this machine, which has {have}; available: {available_devices()}")


# ------------------------------------------------------------------------------------------ model folder

def _looks_local(path: str) -> bool:
    """A path, not a hub id (`org/name`): absolute, relative with ./ ../ ~, or more than one level."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists() or not _HUB_ID.match(path)


def model_config_file(cfg: DictConfig) -> Path | None:
    """The model's config.json, found without the network: the local folder's, or the hub cache's copy.
    None where it cannot be known yet (a tiny model not built, a hub id with the hub online)."""
    path = str(cfg.model.path)
    if cfg.model.build_tiny is not None:
        return None  # built on first use, from model.build_tiny
    if _looks_local(path):
        folder = Path(path).expanduser()
        if not folder.exists():
            raise UserError(f"model.path: {path} does not exist; allowed: a model folder (saved with save_pretrained) or a hub id")
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path: {path} is not a model folder (no config.json there)")
        return folder / "config.json"
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"model.path: {path!r} is not a local folder, and the hub is offline (HF_HUB_OFFLINE=1) with no copy "
                        f"of it in the cache ({constants.HF_HUB_CACHE}); allowed: a downloaded model folder")
    return None  # downloaded in the model stage


def model_context(cfg: DictConfig) -> tuple[int, str] | None:
    """(the model's context length in tokens, where it was read), or None where it is not known."""
    if cfg.model.build_tiny is not None:
        return int(cfg.model.build_tiny.max_position_embeddings), "model.build_tiny.max_position_embeddings"
    config_file = model_config_file(cfg)
    if config_file is None:
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"model.path: {config_file} cannot be read as JSON ({err})") from None
    for node in (config, config.get("text_config") or {}):  # multimodal configs keep it under text_config
        for name in _CONTEXT_FIELDS:
            if isinstance(node.get(name), int):
                return node[name], f"{name} in {config_file}"
    return None


def check_model_files(cfg: DictConfig) -> None:
    context = model_context(cfg)
    if context is not None and cfg.data.max_length > context[0]:
        raise UserError(f"data.max_length: {cfg.data.max_length} is more than the model reads ({context[1]} is {context[0]}); "
                        f"allowed: an integer from 8 to {context[0]}")
