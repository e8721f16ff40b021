"""Loggers from `logger:` (each node a `_target_`, lightning-hydra-template's habit), with what only
the run knows added to a W&B logger: its id, group, job type, tags and flattened config."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from medinject.config import TrackingConfig, TrainSettings
from medinject.util.cli import in_multirun
from medinject.util.errors import UserError
from medinject.util.io import write_text_atomic
from medinject.util.rundir import WANDB_ID
from medinject.util.secrets import redact


PREDICTION_COLUMNS = ("test_set", "task", "id", "question", "reference", "output", "prediction", "prediction_constrained",
                      "em", "em_constrained", "hamming", "hamming_constrained", "judge")


def wandb_run_id(out_dir: Path) -> str:
    """Created once per run directory and stored there: a resumed or requeued job continues its own W&B
    run, and two directories (a single run and a sweep's run of the same config) never share one."""
    path = Path(out_dir) / WANDB_ID
    if path.is_file() and (stored := path.read_text(encoding="utf-8").strip()):
        return stored
    from wandb.sdk.lib.runid import generate_id

    run_id = generate_id()
    write_text_atomic(path, run_id + "\n")
    return run_id


def make_loggers(cfg: TrainSettings, out_dir: Path, resolved: dict) -> list:
    from lightning.pytorch.loggers import WandbLogger

    loggers = []
    for name, node in (cfg.logger or {}).items():
        if node is None:
            continue
        if "_target_" not in node:
            raise UserError(f"logger.{name}: needs a _target_ (e.g. lightning.pytorch.loggers.CSVLogger)")
        try:
            cls = get_class(node._target_)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"logger.{name}: cannot import {node._target_}: {str(err).strip().splitlines()[-1]}") from None
        extra = _wandb_arguments(cfg, node, out_dir, resolved) if issubclass(cls, WandbLogger) else {}
        loggers.append(instantiate(node, _partial_=True)(**extra))  # partial: `config` is also instantiate's own argument
    return loggers


def _wandb_arguments(cfg: TrainSettings, node: DictConfig, out_dir: Path, resolved: dict) -> dict:
    tags = [*sorted(cfg.data.sources), f"mix:{cfg.mix.strategy.value}", f"model:{cfg.model.name}", f"adapter:{cfg.adapter.name}", f"seed:{cfg.seed}"]
    return dict(
        name=f"{cfg.data.name}-seed{cfg.seed}",
        id=wandb_run_id(out_dir),
        resume="allow",
        group=redact(cfg.tracking.group or (cfg.sweep_name if in_multirun() else None)),
        job_type=cfg.data.name,
        tags=redact(tags + list(node.get("tags") or [])),
        config=redact(flatten(resolved)),  # `data.name`, `optim.lr`, ...: columns to filter and group by in W&B
    )


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b.c": value}; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_results(tracking: TrackingConfig, loggers: list, metrics: dict[str, float], step: int, predictions: list[dict]) -> None:
    """The final metrics to every logger; the predictions (credentials masked) as a W&B table when
    `tracking.log_predictions`."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if isinstance(logger, WandbLogger) and tracking.log_predictions and predictions:
            rows = redact([[p.get(column) for column in PREDICTION_COLUMNS] for p in predictions])
            logger.log_table(key="eval/predictions", columns=list(PREDICTION_COLUMNS), data=rows)
        logger.save()


def finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
