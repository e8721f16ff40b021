"""Where a run's checkpoints go and which one it resumes from."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L
import torch

from medinject.util.rundir import CHECKPOINTS

log = logging.getLogger(__name__)

# `step=8.ckpt`, and Lightning's versioned `step=8-v1.ckpt` (written when the name already exists,
# e.g. after resuming from an older checkpoint)
_STEP_NAME = re.compile(r"^step=(\d+)(?:-v(\d+))?$")


def checkpoint_callback(out_dir: Path, every_n_steps: int) -> L.pytorch.callbacks.ModelCheckpoint:
    return L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out_dir / CHECKPOINTS, filename="{step}", every_n_train_steps=every_n_steps, save_last=True
    )


def _order(path: Path) -> tuple[int, int]:
    match = _STEP_NAME.match(path.stem)
    return (int(match[1]), int(match[2] or 0)) if match else (-1, -1)


def last_checkpoint(directory: Path) -> tuple[Path, int] | None:
    """The newest checkpoint that loads: `last.ckpt`, else the `step=N[-vK].ckpt` files from the
    highest N (and version) down (a job killed while writing one leaves it truncated)."""
    if not directory.is_dir():
        return None
    steps = sorted((p for p in directory.glob("step=*.ckpt") if _STEP_NAME.match(p.stem)), key=_order, reverse=True)
    for path in [directory / "last.ckpt", *steps]:
        if not path.is_file():
            continue
        try:
            step = torch.load(path, map_location="cpu", weights_only=False)["global_step"]
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way
            log.warning("checkpoint %s does not load (%s); trying an older one", path, type(err).__name__)
            continue
        return path, step
    return None
