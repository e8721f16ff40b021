"""One whole run: config -> data -> QLoRA fine-tuning in Lightning -> evaluation -> results.json.

`run(cfg)` is the only public entry. It owns the side effects that must happen exactly once per job
(closing the W&B run, writing `results.json`), so jobs of a multirun never share state; the stages
themselves are in `_execute`, top to bottom.
"""

from __future__ import annotations

import functools
import json
import os
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

import medinject.config  # noqa: F401  (registers the schema and resolvers before Hydra composes)
from medinject.config import LoggerKind, to_container
from medinject.data.module import InstructionDataModule
from medinject.data.prepare import prepare_data, write_records
from medinject.errors import UserError, one_line
from medinject.identity import wandb_id
from medinject.eval.runner import eval_items, evaluate_model
from medinject.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from medinject.model.lit import AdapterFineTuning
from medinject.model.load import attach_adapter, load_tokenizer_and_model, parameter_counts
from medinject.secrets import redact

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Do one run and return its record (what `results.json` holds: status, metrics, data, model, timing).

    `results.json` in `paths.output_dir` always ends up saying how the run ended: `completed` with
    metrics, or `failed` with the error; never `completed` for a failure. A directory whose run already
    completed is left as it is (`skip_completed`); one with checkpoints resumes from the last."""
    out_dir = Path(cfg.paths.output_dir)
    if cfg.skip_completed and (done := _completed_record(out_dir)):
        log.info("%s already completed; skipped (skip_completed=false runs it again)", out_dir)
        return {**done, "skipped": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict = {"status": "running", "run_dir": str(out_dir), "metrics": {}, "data": {}, "model": {}, "timing": {}}
    started = time.perf_counter()
    try:
        record["metrics"] = _execute(cfg, out_dir, record)
        record["status"] = "completed"
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = one_line(err)
        raise
    finally:
        _finish_wandb(failed=record["status"] != "completed")
        record["timing"]["total"] = round(time.perf_counter() - started, 3)
        if global_rank() == 0:  # with several processes (DDP), the first one speaks for the run
            write_json_atomic(out_dir / "results.json", redact(record))
    return record


def global_rank() -> int:
    """This process's rank: torchrun's RANK, the SLURM task, or Lightning's launcher's LOCAL_RANK."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if (value := os.environ.get(var, "")).isdigit():
            return int(value)
    return 0


def _completed_record(out_dir: Path) -> dict | None:
    try:
        record = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("status") == "completed" else None


def exit_on_user_error(task):
    """For the CLI: bad input ends the job with one line on stderr and exit status 2, not a traceback.
    In a multirun the error is left to Hydra, which records the job as failed and runs the others."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
            return task(cfg)
        except UserError as err:
            if _in_multirun():
                raise
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
    if cfg.trainer.strategy == "fsdp" and cfg.adapter.quantization is not None:
        raise UserError(
            f"trainer.strategy: fsdp cannot shard the 4-bit base of adapter={cfg.adapter.name}; "
            "use trainer=ddp, or an unquantized adapter (adapter=dora / lora)"
        )


def _fit_threads_to_allocation() -> None:
    """Use the CPUs SLURM gave the job, not every core of the node: several jobs on one node each
    running a full set of OpenMP threads slow each other down many times over."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if cpus and cpus.isdigit() and int(cpus) < torch.get_num_threads():
        torch.set_num_threads(int(cpus))


def _execute(cfg: DictConfig, out_dir: Path, record: dict) -> dict[str, float]:
    _check(cfg)
    _fit_threads_to_allocation()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resolved = redact(to_container(cfg))
    first = global_rank() == 0
    if first:
        write_text_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))

    with _stage(record, "data"):
        prepared = prepare_data(cfg)  # test sets are read here too: a bad one fails before training
        if first:
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
        **trainer_arguments(cfg),
        default_root_dir=str(out_dir),
        logger=logger,
        plugins=_cluster_plugins(),
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
        resume = last_checkpoint(out_dir / "checkpoints")
        loss_start = _probe_loss_start(module, probe, out_dir, resuming=resume is not None)
        if resume:
            log.info("resuming from %s (optimizer step %d)", resume[0], resume[1])
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume[0] if resume else None)
        record["train"] = {"resumed_from_step": resume[1] if resume else None, "world_size": trainer.world_size}
        # every process counted its own share of the data; a collective, so all of them take part
        tokens, pad = (float(trainer.strategy.reduce(torch.tensor(float(n)), reduce_op="sum")) for n in (module.tokens_seen, module.pad_seen))
        if trainer.global_rank != 0:  # the other data-parallel processes are done once training is
            return {}
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
        "train/tokens": tokens,
        "train/pad_fraction": pad / max(tokens + pad, 1.0),
        **eval_metrics,
    }
    if logger:
        logger.log_metrics(metrics, step=trainer.global_step)
        _log_predictions(cfg, logger, predictions)
        logger.save()
    return metrics


def trainer_arguments(cfg: DictConfig) -> dict:
    """The `L.Trainer` settings of every training run (run() adds logging, checkpoints and cluster
    plugins; bench/train_throughput.py uses the same ones)."""
    t = cfg.trainer
    return dict(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # EpochBatches shards by rank itself, and stays resumable
    )


def last_checkpoint(directory: Path) -> tuple[Path, int] | None:
    """The newest checkpoint that loads: `last.ckpt`, else the `step=N.ckpt` files from the highest N
    down (a job killed while writing one leaves it truncated)."""
    if not directory.is_dir():
        return None
    steps = sorted(directory.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]), reverse=True)
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


def _probe_loss_start(module: AdapterFineTuning, probe, out_dir: Path, resuming: bool) -> float:
    """The probe loss of the untrained adapter, measured once: a resumed run reads the first attempt's."""
    path = out_dir / "probe_loss_start.json"
    if resuming and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["probe_loss_start"]
    loss = module.mean_loss(probe)
    write_json_atomic(path, {"probe_loss_start": loss})
    return loss


def _cluster_plugins() -> list:
    """On SLURM, submitit owns the requeue: its USR2 handler requeues a job that nears its time limit
    or is preempted, and the requeued job resumes from its checkpoint. Lightning's own SLURM requeue
    (a SIGUSR1 handler calling `scontrol requeue`) is switched off so the two never both act."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


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
        id=wandb_id(cfg),  # from the config: a requeued or relaunched job continues its own W&B run
        resume="allow",
        group=redact(cfg.logger.group or (cfg.sweep_name if _in_multirun() else None)),
        job_type=cfg.data.name,
        tags=redact(tags + list(cfg.logger.tags)),
        mode=cfg.logger.mode.value,
        save_dir=str(out_dir),
        config=flatten(resolved),  # `data.name`, `optim.lr`, ...: columns to filter and group by in W&B
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


PREDICTION_COLUMNS = ("test_set", "task", "id", "question", "reference", "output", "prediction", "prediction_constrained",
                      "em", "em_constrained", "hamming", "hamming_constrained", "judge")


def _log_predictions(cfg: DictConfig, logger, predictions: list[dict]) -> None:
    if cfg.logger.kind != LoggerKind.wandb or not cfg.logger.log_predictions or not predictions:
        return
    rows = [[p.get(column) for column in PREDICTION_COLUMNS] for p in predictions]
    logger.log_table(key="eval/predictions", columns=list(PREDICTION_COLUMNS), data=rows)


def _finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
