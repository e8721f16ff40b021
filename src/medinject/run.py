"""One whole run: config -> data -> QLoRA fine-tuning in Lightning -> evaluation -> results.json.

`run(cfg)` is the only public entry. It owns the side effects that must happen exactly once per job
(closing the W&B run, writing `results.json`), so jobs of a multirun never share state; the stages
themselves are in `_execute`, top to bottom.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

import medinject.config  # noqa: F401  (registers the schema and resolvers before Hydra composes)
from medinject.config import LoggerKind, to_container
from medinject.data.module import InstructionDataModule
from medinject.data.prepare import prepare_data, write_records
from medinject.errors import UserError
from medinject.eval.runner import eval_items, evaluate_model
from medinject.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from medinject.model.lit import AdapterFineTuning
from medinject.model.load import attach_adapter, load_tokenizer_and_model, parameter_counts
from medinject.secrets import redact

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Do one run and return its metrics. `results.json` in `paths.output_dir` always ends up saying how
    the run ended: `completed` with metrics, or `failed` with the error; never `completed` for a failure."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict = {"status": "running", "run_dir": str(out_dir), "metrics": {}, "data": {}, "model": {}, "timing": {}}
    started = time.perf_counter()
    try:
        record["metrics"] = _execute(cfg, out_dir, record)
        record["status"] = "completed"
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        raise
    finally:
        _finish_wandb(failed=record["status"] != "completed")
        record["timing"]["total"] = round(time.perf_counter() - started, 3)
        write_json_atomic(out_dir / "results.json", redact(record))
    return record["metrics"]


def exit_on_user_error(task):
    """For the CLI: bad input ends the job with one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
            return task(cfg)
        except UserError as err:
            print(f"medinject: error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


@contextmanager
def _stage(record: dict, name: str):
    start = time.perf_counter()
    log.info("stage %s", name)
    yield
    record["timing"][name] = round(time.perf_counter() - start, 3)


def _check(cfg: DictConfig) -> None:
    """Cheap checks of values the schema cannot express, before anything is loaded."""
    if cfg.trainer.max_steps == 0:
        raise UserError("trainer.max_steps: 0 trains nothing; use -1 for max_epochs or a positive number")


def _fit_threads_to_allocation() -> None:
    """Use the CPUs SLURM gave the job, not every core of the node: several jobs on one node each
    running a full set of OpenMP threads slow each other down many times over."""
    import os

    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if cpus and cpus.isdigit() and int(cpus) < torch.get_num_threads():
        torch.set_num_threads(int(cpus))


def _execute(cfg: DictConfig, out_dir: Path, record: dict) -> dict[str, float]:
    _check(cfg)
    _fit_threads_to_allocation()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resolved = redact(to_container(cfg))
    write_text_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))

    with _stage(record, "data"):
        prepared = prepare_data(cfg)  # test sets are read here too: a bad one fails before training
        write_records(prepared, out_dir)
        examples = prepared.examples
        test_items = eval_items(cfg, prepared.test_rows)
        record["data"] = {
            "config": cfg.data.name,
            "sources": sorted(cfg.data.sources),
            "mix": to_container(cfg.mix),
            "seed": cfg.seed,
            "n_examples": len(examples),
            "counts": prepared.manifest["counts"],
            "contaminated_rows": prepared.manifest["contaminated_rows"],
            "selected_ids_sha256": prepared.manifest["selected_ids_sha256"],
        }

    with _stage(record, "model"):
        tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
        model = attach_adapter(base, cfg.adapter, cfg.trainer.gradient_checkpointing)
        trainable, total = parameter_counts(model)
        record["model"] = {
            "name": cfg.model.name,
            "path": cfg.model.path,
            "adapter": cfg.adapter.name,
            "method": cfg.adapter.method.value,
            "quantization": cfg.adapter.quantization.value if cfg.adapter.quantization else None,
            "trainable_params": trainable,
            "total_params": total,
        }
        log.info("model %s: %d trainable of %d parameters", cfg.model.name, trainable, total)

    with _stage(record, "tokenize"):
        datamodule = InstructionDataModule(cfg, tokenizer, examples, prepared.manifest["files"])
        datamodule.setup("fit")
        record["data"]["tokenized"] = datamodule.stats

    module = AdapterFineTuning(model, cfg.optim)
    logger = _make_logger(cfg, out_dir, resolved)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        max_steps=cfg.trainer.max_steps,
        max_epochs=cfg.trainer.max_epochs,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(out_dir),
        logger=logger,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=out_dir / "checkpoints",
                filename="{step}",
                every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
                save_last=True,
            )
        ],
    )

    with _stage(record, "train"):
        probe = datamodule.probe_dataloader()
        loss_start = module.mean_loss(probe)
        trainer.fit(module, datamodule=datamodule)
        loss_end = module.mean_loss(probe)
        adapter_dir = out_dir / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        write_text_atomic(adapter_dir / "medinject_config.yaml", OmegaConf.to_yaml(resolved))

    with _stage(record, "eval"):
        eval_metrics, predictions = evaluate_model(model, tokenizer, cfg, test_items)
        write_jsonl_atomic(out_dir / "predictions.jsonl", predictions)

    metrics = {
        "train/probe_loss_start": loss_start,
        "train/probe_loss_end": loss_end,
        "train/optimizer_steps": float(trainer.global_step),
        "train/tokens": float(module.tokens_seen),
        "train/pad_fraction": module.pad_fraction,
        **eval_metrics,
    }
    if logger:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
    return metrics


def _sweep_name() -> str | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def _make_logger(cfg: DictConfig, out_dir: Path, resolved: dict):
    kind = cfg.logger.kind
    if kind == LoggerKind.none:
        return False
    if kind == LoggerKind.csv:
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out_dir), name="csv", version="")
    from lightning.pytorch.loggers import WandbLogger

    tags = [*sorted(cfg.data.sources), f"mix:{cfg.mix.strategy.value}", f"model:{cfg.model.name}", f"adapter:{cfg.adapter.name}", f"seed:{cfg.seed}"]
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=f"{cfg.data.name}-seed{cfg.seed}",
        group=redact(cfg.logger.group or _sweep_name()),
        job_type=cfg.data.name,
        tags=redact(tags + list(cfg.logger.tags)),
        mode=cfg.logger.mode.value,
        save_dir=str(out_dir),
        config=resolved,
    )


def _finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
