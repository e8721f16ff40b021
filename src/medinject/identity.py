"""A run's identity: a short hash of what determines its result.

The run directory (`<data>-s<seed>-<key>`) and the W&B run id are built from it instead of a
timestamp, so a requeued, relaunched or re-typed command lands in the directory of the run it
continues, finds its checkpoint, and resumes its W&B run. Two configs that would train differently
never share a key.

Hashed: the composed config *before* interpolations are resolved, so `${paths.sample_data}/...`
hashes the same on every machine. Left out: where things are written (`paths.*` except the dataset
download, which decides what is trained on), how they are logged (`logger`), how the job is run
(`hydra`, with its launcher), and the run-control switches below.
"""

from __future__ import annotations

import hashlib
import json
import re

from omegaconf import DictConfig, OmegaConf

RUN_CONTROL = ("hydra", "logger", "skip_completed", "dry_run", "sweep_name", "plan", "report")
KEY_LENGTH = 10


def identity_fields(cfg: DictConfig) -> dict:
    """The part of the config that the key is a hash of (interpolations left as written)."""
    tree = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    for key in RUN_CONTROL:
        tree.pop(key, None)
    paths = tree.pop("paths", None) or {}
    tree["paths"] = {"medinjection": paths.get("medinjection")}
    return tree


def run_key(cfg: DictConfig) -> str:
    blob = json.dumps(identity_fields(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def run_name(cfg: DictConfig) -> str:
    """`<data config>-s<seed>-<key>`: readable in listings, unique per config."""
    return f"{cfg.data.name}-s{cfg.seed}-{run_key(cfg)}"


def wandb_id(cfg: DictConfig) -> str:
    """The run name in the characters W&B accepts in an id."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_name(cfg))


def register_resolver() -> None:
    # `${medinject.run_name:}` in hydra.run.dir / hydra.sweep.subdir; `_root_` is the whole job config.
    if not OmegaConf.has_resolver("medinject.run_name"):
        OmegaConf.register_new_resolver("medinject.run_name", lambda *, _root_: run_name(_root_))
