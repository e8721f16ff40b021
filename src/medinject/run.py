"""One whole run, as the study does it: prepare data -> load model -> fit -> evaluate -> results.json.

`run(cfg)` is the only public entry. It owns the side effects that must happen exactly once per job
(checking the run directory's inputs, closing the W&B run, writing `results.json`), so jobs of a
multirun never share state; each stage is a function of its own package.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from medinject.config import to_container
from medinject.data.inputs import check_inputs, input_hashes
from medinject.data.prepare import PreparedData, prepare_data, write_records
from medinject.eval.runner import check_evaluation, eval_items, evaluate_model, evaluation_record, model_device
from medinject.model.load import load_model
from medinject.train.fit import fit, save_adapter
from medinject.train.loggers import finish_wandb, log_results
from medinject.util.errors import UserError, one_line
from medinject.util.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

log = logging.getLogger(__name__)

INPUTS = "inputs.json"  # content hashes of the files this directory's checkpoints and results come from


def run(cfg: DictConfig) -> dict:
    """Do one run and return its record (what `results.json` holds: status, metrics, data, model,
    devices, inputs, timing).

    `results.json` in `paths.output_dir` always ends up saying how the run ended: `completed` with
    metrics, or `failed` with the error; never `completed` for a failure. A directory whose run already
    completed is left as it is (`skip_completed`); one with checkpoints resumes from the last; one whose
    results or checkpoints came from other input files stops the run with one line."""
    out_dir = Path(cfg.paths.output_dir)
    inputs = input_hashes(cfg)
    check_inputs(_read_json(out_dir / INPUTS), inputs, out_dir)
    if cfg.skip_completed and (done := _completed_record(out_dir)):
        log.info("%s already completed; skipped (skip_completed=false runs it again)", out_dir)
        return {**done, "skipped": True}
    main = global_rank() == 0  # with several processes (DDP), the first one speaks for the run
    if main:
        write_json_atomic(out_dir / INPUTS, inputs)
    record: dict = {"status": "running", "run_dir": str(out_dir), "metrics": {}, "data": {}, "model": {}, "devices": {},
                    "inputs": inputs, "timing": {}}
    started = time.perf_counter()
    try:
        record["metrics"] = _execute(cfg, out_dir, record)
        record["status"] = "completed"
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = one_line(err)
        raise
    finally:
        finish_wandb(failed=record["status"] != "completed")
        record["timing"]["total"] = round(time.perf_counter() - started, 3)
        if main:
            write_json_atomic(out_dir / "results.json", record)
    return record


def _execute(cfg: DictConfig, out_dir: Path, record: dict) -> dict[str, float]:
    check_settings(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resolved = to_container(cfg)
    main = global_rank() == 0
    if main:
        write_text_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))

    with _stage(record, "data"):
        prepared = prepare_data(cfg)  # test sets are read here too: a bad one fails before training
        if main:
            write_records(prepared, out_dir)
        test_items = eval_items(cfg, prepared.test_rows)
        check_evaluation(cfg)  # e.g. WordNet for METEOR: fail here, not after training
        record["data"] = _data_record(cfg, prepared)

    with _stage(record, "model"):
        tokenizer, model, record["model"] = load_model(cfg)

    with _stage(record, "train"):
        fitted = fit(cfg, out_dir, model, tokenizer, prepared.examples, prepared.manifest["files"], resolved)
        record["data"]["tokenized"] = fitted.tokenized
        record["train"] = {"resumed_from_step": fitted.resumed_from_step, "world_size": fitted.world_size}
        record["devices"]["train"] = fitted.device
        if not fitted.is_main:  # the other data-parallel processes are done once training is
            return {}
        save_adapter(fitted.model, tokenizer, out_dir / "adapter", resolved)

    with _stage(record, "eval"):
        model = fitted.model.to(cfg.eval.device) if cfg.eval.device else fitted.model
        record["devices"]["eval"] = model_device(model)
        record["eval"] = evaluation_record(cfg)  # protocol and judge rubric: what the eval/ numbers mean
        eval_metrics, predictions = evaluate_model(model, tokenizer, cfg, test_items)
        write_jsonl_atomic(out_dir / "predictions.jsonl", predictions)

    metrics = {
        "train/probe_loss_start": fitted.loss_start,
        "train/probe_loss_end": fitted.loss_end,
        "train/optimizer_steps": float(fitted.optimizer_steps),
        "train/tokens": fitted.tokens,
        "train/pad_fraction": fitted.pad / max(fitted.tokens + fitted.pad, 1.0),
        **eval_metrics,
    }
    log_results(cfg, fitted.loggers, metrics, fitted.optimizer_steps, predictions)
    return metrics


def check_settings(cfg: DictConfig) -> None:
    """Cheap checks of values the schema cannot express, before anything is loaded."""
    if cfg.trainer.max_steps == 0:
        raise UserError("trainer.max_steps: 0 trains nothing; use -1 for max_epochs or a positive number")
    if cfg.trainer.strategy == "fsdp":
        raise UserError(
            "trainer.strategy: fsdp is not supported (saving and evaluating a sharded adapter is untested); "
            "use trainer=ddp, which trains every adapter on several GPUs"
        )


def _data_record(cfg: DictConfig, prepared: PreparedData) -> dict:
    return {
        "config": cfg.data.name,
        "sources": sorted(cfg.data.sources),
        "mix": to_container(cfg.mix),
        "seed": cfg.seed,
        "n_examples": len(prepared.examples),
        "counts": prepared.manifest["counts"],
        "contaminated_rows": prepared.manifest["contaminated_rows"],
        "selected_ids_sha256": prepared.manifest["selected_ids_sha256"],
    }


def global_rank() -> int:
    """This process's rank: torchrun's RANK, the SLURM task, or Lightning's launcher's LOCAL_RANK."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if (value := os.environ.get(var, "")).isdigit():
            return int(value)
    return 0


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _completed_record(out_dir: Path) -> dict | None:
    record = _read_json(out_dir / "results.json")
    return record if record and record.get("status") == "completed" else None


@contextmanager
def _stage(record: dict, name: str):
    start = time.perf_counter()
    log.info("stage %s", name)
    yield
    record["timing"][name] = round(time.perf_counter() - start, 3)
