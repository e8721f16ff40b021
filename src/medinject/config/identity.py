"""The run identity: a short hash of what decides a run's result (`run_key`), and the run's name.

The unhashed fields (`medinject.config.fields.unhashed`) are left out of it.
"""

from __future__ import annotations

import functools
import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from medinject.config.enums import renamed_values
from medinject.config.fields import schema_fields
from medinject.config.schema import RunConfig


@functools.cache
def unhashed_keys() -> tuple[str, ...]:
    """Dotted names of every unhashed field of the schema (a field inside one is left out with it)."""
    return tuple(name for name, f, inside in schema_fields(RunConfig) if f.metadata.get("unhashed") and not inside)


# Run identity: a short hash of what decides a run's result. The run directory (`<data>-s<seed>-<key>`)
# is named after it instead of a timestamp, so a requeued, relaunched or re-typed command lands in the
# directory of the run it continues, finds its checkpoint, and skips it once it completed. Hashed: the
# composed config *before* interpolations are resolved (so `${paths.sample_data}/...` hashes the same
# on every machine), without `hydra` and every `unhashed` field. What the input files *contain* is not
# in the key: their content hashes are recorded in the run directory and compared when a run starts
# (medinject.data.inputs).
RUN_KEY_LENGTH = 10


def identity_fields(cfg: DictConfig) -> dict:
    """The part of the config that the key is a hash of (interpolations left as written)."""
    tree = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    tree.pop("hydra", None)
    for dotted in unhashed_keys():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    for key, old_names in renamed_values():  # a renamed value hashes under its old name: runs keep their directories
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = old_names.get(node[leaf], node[leaf])
    return tree


def run_key(cfg: DictConfig) -> str:
    blob = json.dumps(identity_fields(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:RUN_KEY_LENGTH]


def run_name(cfg: DictConfig) -> str:
    """`<data config>-s<seed>-<key>`: readable in listings, unique per config."""
    return f"{cfg.data.name}-s{cfg.seed}-{run_key(cfg)}"


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (enums as their names), for saving and logging."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
