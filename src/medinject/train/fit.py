"""The training stage: tokens and batches -> LightningModule -> `Trainer.fit`, resumable.

`fit()` returns the adapter model back on the device it trained on: Lightning's
`Strategy.teardown()` moves the module to the CPU when `fit` ends, and everything after training
(saving, evaluation, the judge) must run where training ran, not on that CPU copy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from medinject.data.rows import Example
from medinject.train.callbacks import ProbeLoss, user_callbacks
from medinject.train.checkpoints import checkpoint_callback, last_checkpoint
from medinject.train.datamodule import InstructionDataModule
from medinject.train.lit import AdapterFineTuning
from medinject.train.loggers import make_loggers
from medinject.util.io import redact_files, write_text_atomic
from medinject.util.rundir import ADAPTER_RUN_CONFIG, CHECKPOINTS

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    model: torch.nn.Module  # the peft model, on `device`
    device: str  # the trainer's root device, e.g. "cuda:0"
    is_main: bool  # rank 0: the process that saves, evaluates and writes results
    loss_start: float
    loss_end: float
    optimizer_steps: int
    tokens: float  # non-pad tokens trained on, all processes together
    pad: float
    world_size: int
    resumed_from_step: int | None
    tokenized: dict  # tokenization statistics
    loggers: list
    peak_gpu_memory_gib: float | None  # torch's peak allocated memory on the training GPU (None on CPU)


def trainer_arguments(cfg: DictConfig) -> dict:
    """The `L.Trainer` settings of every training run (fit() adds logging, checkpoints and cluster
    plugins; bench/train_throughput.py uses the same ones)."""
    t = cfg.trainer
    return dict(
        accelerator=t.accelerator,
        devices=list(t.local_gpus) if t.local_gpus else t.devices,
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


def fit(cfg: DictConfig, out_dir: Path, model, tokenizer, examples: list[Example], files: dict[str, str], resolved: dict) -> Fitted:
    _fit_threads(cfg.trainer.cpu_threads)
    datamodule = InstructionDataModule(cfg, tokenizer, examples, files)
    datamodule.setup("fit")
    module = AdapterFineTuning(model, cfg.optim)
    resume = last_checkpoint(out_dir / CHECKPOINTS)
    if resume:
        log.info("resuming from %s (optimizer step %d)", resume[0], resume[1])
    probe = ProbeLoss(datamodule.probe_dataloader(), out_dir, resuming=resume is not None)
    loggers = make_loggers(cfg, out_dir, resolved)
    trainer = L.Trainer(
        **trainer_arguments(cfg),
        default_root_dir=str(out_dir),
        logger=loggers or False,
        plugins=_cluster_plugins(),
        callbacks=[checkpoint_callback(out_dir, cfg.trainer.checkpoint_every_n_steps), probe, *user_callbacks(cfg)],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume[0] if resume else None)
    tokens, pad = (float(n) for n in summed_over_processes(trainer.strategy, module.tokens_seen, module.pad_seen))
    device = trainer.strategy.root_device
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    module.to(device)  # back from the CPU, where Lightning's teardown left it
    if probe.end is None:  # a resumed run already at its last step: Lightning skipped the loop and its hooks
        probe.end = module.mean_loss(probe.loader)
    return Fitted(
        model=model,
        device=str(device),
        is_main=trainer.global_rank == 0,
        loss_start=probe.start,
        loss_end=probe.end,
        optimizer_steps=trainer.global_step,
        tokens=tokens,
        pad=pad,
        world_size=trainer.world_size,
        resumed_from_step=resume[1] if resume else None,
        tokenized=datamodule.stats,
        loggers=loggers,
        peak_gpu_memory_gib=peak,
    )


def summed_over_processes(strategy, *counts: float) -> torch.Tensor:
    """Each count summed over every process (each counted its own share of the data). A collective, so
    all processes take part; the tensor lives on the strategy's root device, since NCCL reduces CUDA
    tensors only (gloo, on CPUs, takes either)."""
    return strategy.reduce(torch.tensor([float(n) for n in counts], device=strategy.root_device), reduce_op="sum")


def save_adapter(model, tokenizer, adapter_dir: Path, resolved: dict) -> None:
    """The trained adapter with its tokenizer and the resolved config; credentials masked in every file."""
    model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    write_text_atomic(adapter_dir / ADAPTER_RUN_CONFIG, OmegaConf.to_yaml(resolved))
    redact_files(adapter_dir)


def _fit_threads(threads: int | None) -> None:
    """`trainer.cpu_threads` when set; else the CPUs SLURM gave the job, not every core of the node:
    several jobs on one node each running a full set of OpenMP threads slow each other down many times
    over."""
    if threads is None:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
        threads = int(cpus) if cpus and cpus.isdigit() and int(cpus) < torch.get_num_threads() else None
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def _cluster_plugins() -> list:
    """On SLURM, submitit owns the requeue: its USR2 handler requeues a job that nears its time limit
    or is preempted, and the requeued job resumes from its checkpoint. Lightning's own SLURM requeue
    (a SIGUSR1 handler calling `scontrol requeue`) is switched off so the two never both act."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
