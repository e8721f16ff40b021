"""Ranges and combinations a run is checked against before any data or model is loaded
(`check_settings`): each refusal is one line naming the key and what it allows. The ranges are the
schema fields' own (`allowed=` in `medinject.config.schema`); what no single field can say is here.
"""

from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf

from medinject.config.fields import Allowed, schema_fields
from medinject.config.schema import RunConfig
from medinject.util.errors import UserError


@functools.cache
def ranged_keys() -> tuple[tuple[str, Allowed], ...]:
    """(dotted name, range) of every schema field that states one, in schema order."""
    return tuple((name, f.metadata["allowed"]) for name, f, _ in schema_fields(RunConfig) if "allowed" in f.metadata)


# What Lightning's Trainer accepts as `precision` (lightning/fabric/plugins/precision/precision.py:
# _PRECISION_INPUT_STR and _PRECISION_INPUT_STR_ALIAS), kept here so that checking it imports no Lightning;
# tests/test_bad_input.py pins it to Lightning's own lists.
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
                        "32-true", "64-true", "64", "32", "16", "bf16")
# The torch dtypes model/load.py loads weights in (names of torch attributes); a test pins them to torch.
TORCH_FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64", "float", "half", "double")
# Checked in this order: adapter.compute_dtype usually interpolates model.dtype, which is named first.
_DTYPE_KEYS = ("model.dtype", "adapter.compute_dtype")


def check_settings(cfg: DictConfig) -> None:
    """Refuse, in one line naming the key and its allowed range, a value that would crash late, be
    silently ignored, or train nothing; and the combinations no run supports."""
    for key, allowed in ranged_keys():
        value = OmegaConf.select(cfg, key)
        if not allowed.test(value):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise UserError(f"{key}: {shown!r} is out of range; allowed: {allowed.text}")
    if cfg.trainer.precision not in LIGHTNING_PRECISIONS:
        raise UserError(f"trainer.precision: {cfg.trainer.precision!r} is not a Lightning precision; allowed: {', '.join(LIGHTNING_PRECISIONS)}")
    for key in _DTYPE_KEYS:
        if (value := OmegaConf.select(cfg, key)) not in TORCH_FLOAT_DTYPES:
            raise UserError(f"{key}: {value!r} is not a torch floating-point dtype; allowed: {', '.join(TORCH_FLOAT_DTYPES)}")
    t = cfg.trainer
    if not (t.max_epochs >= 1 or (t.max_epochs == -1 and t.max_steps >= 1)):
        raise UserError(f"trainer.max_epochs: {t.max_epochs!r} trains nothing; allowed: an integer >= 1, or -1 with trainer.max_steps >= 1")
    devices = cfg.trainer.devices
    if not (devices == "auto" or devices == -1 or (isinstance(devices, int) and devices >= 1) or (OmegaConf.is_list(devices) and len(devices) >= 1)):
        raise UserError(f"trainer.devices: {devices!r} is out of range; allowed: an integer >= 1, -1, 'auto' or a list of device ids")
    if cfg.trainer.strategy == "fsdp":
        raise UserError(
            "trainer.strategy: fsdp is not supported (saving and evaluating a sharded adapter is untested); "
            "use trainer=ddp, which trains every adapter on several GPUs"
        )


def device_count(devices) -> int:
    """The number of devices `trainer.devices` names, for a job script that must ask for a number:
    an integer >= 1, a list of indices, or Lightning's "0,1" string. -1 and "auto" mean "every device
    of the machine", which a job script cannot know before it runs."""
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"trainer.devices={text}: a cluster job asks for a fixed number of devices per node; "
                    "set trainer.devices=N (or a list of GPU indices)")
