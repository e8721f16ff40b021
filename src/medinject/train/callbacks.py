"""Callbacks: medinject's own (the probe loss), and the user's, instantiated from `callbacks:`."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from hydra.utils import instantiate

from medinject.config import TrainSettings
from medinject.util.errors import UserError
from medinject.util.io import write_json_atomic
from medinject.util.rundir import PROBE_LOSS


class ProbeLoss(L.Callback):
    """The loss on fixed training batches in eval mode, before and after fitting, measured where the
    model trains: Lightning has placed it on its device when `on_fit_start` runs, and has not yet
    moved it back to the CPU when `on_train_end` runs.

    A resumed run has already loaded trained weights at `on_fit_start`, so it reads the first
    attempt's starting loss from the run directory (`rundir.PROBE_LOSS`) instead of measuring it again."""

    def __init__(self, loader, out_dir: Path, resuming: bool):
        self.loader = loader
        self.path = Path(out_dir) / PROBE_LOSS
        self.resuming = resuming
        self.start: float | None = None
        self.end: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.resuming and self.path.is_file():
            self.start = json.loads(self.path.read_text(encoding="utf-8"))["probe_loss_start"]
            return
        self.start = pl_module.mean_loss(self.loader)
        if trainer.is_global_zero:
            write_json_atomic(self.path, {"probe_loss_start": self.start})

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.end = pl_module.mean_loss(self.loader)


def user_callbacks(cfg: TrainSettings) -> list[L.Callback]:
    """Every node of `callbacks:` with a `_target_`, instantiated (lightning-hydra-template's habit):
    `+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping +callbacks.stop.monitor=train/loss`."""
    callbacks = []
    for name, node in (cfg.callbacks or {}).items():
        if node is None:  # `callbacks.name=null` switches one off
            continue
        if "_target_" not in node:
            raise UserError(f"callbacks.{name}: needs a _target_ (e.g. lightning.pytorch.callbacks.EarlyStopping)")
        try:
            callback = instantiate(node)
        except Exception as err:  # noqa: BLE001 - an import or argument error of the user's class
            raise UserError(f"callbacks.{name}: cannot instantiate {node._target_}: {str(err).strip().splitlines()[-1]}") from None
        if not isinstance(callback, L.Callback):
            raise UserError(f"callbacks.{name}: {node._target_} is not a lightning Callback")
        callbacks.append(callback)
    return callbacks
