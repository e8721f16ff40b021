"""One whole run, as the study does it: prepare data -> load model -> fit -> evaluate -> the run record.

`run(cfg)` is the only public entry. It owns the side effects that must happen exactly once per job
(checking the run directory's inputs, closing the W&B run, writing the run record), so jobs of a
multirun never share state; each stage is a function of its own package. What the run directory
holds, and the shape of its records, is `medinject.util.rundir`'s.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medinject.config import DataSettings, EvalSettings, TrainSettings, check_settings, to_container
from medinject.data.inputs import check_inputs, input_hashes
from medinject.data.planted import ensure_planted
from medinject.data.prepare import PreparedData, prepare_data, write_records
from medinject.model.preflight import check_run_prerequisites
from medinject.train.loggers import finish_wandb, log_results
from medinject.util.cluster import is_main_process
from medinject.util.errors import Interrupted, UserError, one_line
from medinject.util.lock import ending_signals, raise_if_interrupted, run_lock
from medinject.util import rundir
from medinject.util.io import read_json, write_text_atomic
from medinject.util.rundir import RunRecord

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> RunRecord:
    """Do one run and return its record (`rundir.RunRecord`: status, metrics, data, model, devices,
    inputs, timing).

    The run record in `paths.output_dir` always ends up saying how the run ended, when the disk allows:
    `completed` with metrics, `failed` with the error, or `interrupted` (a signal, Ctrl-C, a requeue)
    with the reason; never `completed` for a failure. One process at a time runs in a directory (a
    file lock). A directory whose run completed, with its results, predictions and adapter intact, is
    left as it is (`skip_completed`); one with checkpoints resumes from the last; one whose results or
    checkpoints came from other input files stops the run with one line."""
    out_dir = Path(cfg.paths.output_dir)
    main = is_main_process()  # with several processes (DDP), the first one speaks for the run
    with run_lock(out_dir, wait=cfg.wait_for_lock) if main else nullcontext(), ending_signals():
        done = _trusted_completed_record(out_dir)
        record = rundir.new_record(out_dir)
        started = time.perf_counter()
        try:
            check_settings(cfg)  # before anything is read or loaded
            check_run_prerequisites(cfg)  # devices, the model folder and its context: still nothing loaded
            ensure_planted(cfg.get("planted"), cfg.paths.sample_data)  # known-answer data (a `planted` config): generated when absent
            record["inputs"] = input_hashes(DataSettings.of(cfg))  # the data stage reads these files; they are hashed once, here
            check_inputs(rundir.read_inputs(out_dir), record["inputs"], out_dir)
            if cfg.skip_completed and done:
                log.info("%s already completed; skipped (skip_completed=false runs it again)", out_dir)
                return {**done, "skipped": True}
            done = None  # from here on this run writes the directory's results
            if main:
                rundir.write_inputs(out_dir, record["inputs"])
            record["metrics"] = _execute(cfg, out_dir, record)
            raise_if_interrupted()  # a signal whose exception was swallowed on the way is not a completed run
            record["status"] = "completed"
        except BaseException as err:
            record["status"] = "interrupted" if isinstance(err, (Interrupted, KeyboardInterrupt, SystemExit)) else "failed"
            record["error"] = one_line(err)
            raise
        finally:
            finish_wandb(failed=record["status"] != "completed")
            record["timing"]["total"] = round(time.perf_counter() - started, 3)
            if main and done is None:  # a completed run's results are never overwritten by a refusal
                _write_final_record(out_dir, record)
    return record


def _write_final_record(out_dir: Path, record: RunRecord) -> None:
    """The run record, atomically; when the disk refuses even that, the run still ends with the error
    it had (no half-written file is left: the atomic writer removes its temporary file)."""
    try:
        rundir.write_results(out_dir, record)
    except OSError as err:
        log.error("could not write %s: %s", out_dir / rundir.RESULTS, err.strerror or err)


def _execute(cfg: DictConfig, out_dir: Path, record: RunRecord) -> dict[str, float]:
    # torch, Lightning, transformers and peft are imported here, once the settings have been checked:
    # a refused setting answers in a second or two, not after the ~10 s these imports take
    import lightning as L

    from medinject.eval.runner import check_evaluation, eval_items, evaluate_model, evaluation_record, model_device
    from medinject.eval.untrained import evaluate_untrained, is_untrained
    from medinject.model.load import load_model
    from medinject.train.fit import fit, save_adapter

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resolved = to_container(cfg)
    main = is_main_process()
    if main:
        write_text_atomic(out_dir / rundir.CONFIG, OmegaConf.to_yaml(resolved))
    evaluation = EvalSettings.of(cfg)  # each stage reads only its own part of the config
    if is_untrained(cfg.data):  # data=base: the base model as it is, evaluated as every fine-tuned run is
        return evaluate_untrained(evaluation, cfg.data.name, int(cfg.seed), str(cfg.trainer.accelerator), out_dir, record)

    with _stage(record, "data"):
        prepared = prepare_data(DataSettings.of(cfg), record["inputs"])  # the test sets too: a bad one fails before training
        if main:
            write_records(prepared, out_dir)
        test_items = eval_items(evaluation, prepared.test_rows)
        check_evaluation(evaluation)  # e.g. WordNet for METEOR: fail here, not after training
        record["data"] = _data_record(cfg, prepared)

    with _stage(record, "model"):
        tokenizer, model, record["model"] = load_model(cfg.model, cfg.adapter, cfg.trainer)

    with _stage(record, "train"):
        fitted = fit(TrainSettings.of(cfg), out_dir, model, tokenizer, prepared.examples, prepared.manifest["files"], resolved)
        record["data"]["tokenized"] = fitted.tokenized
        record["train"] = {"resumed_from_step": fitted.resumed_from_step, "world_size": fitted.world_size,
                           "peak_gpu_memory_gib": fitted.peak_gpu_memory_gib}
        record["devices"]["train"] = fitted.device
        if not fitted.is_main:  # the other data-parallel processes are done once training is
            return {}
        save_adapter(fitted.model, tokenizer, out_dir / rundir.ADAPTER, resolved)

    with _stage(record, "eval"):
        model = fitted.model.to(cfg.eval.device) if cfg.eval.device else fitted.model
        record["devices"]["eval"] = model_device(model)
        record["eval"] = evaluation_record(evaluation)  # protocol and judge rubric: what the eval/ numbers mean
        eval_metrics, predictions = evaluate_model(model, tokenizer, evaluation, test_items)
        rundir.write_predictions(out_dir, predictions)

    metrics = {
        "train/probe_loss_start": fitted.loss_start,
        "train/probe_loss_end": fitted.loss_end,
        "train/optimizer_steps": float(fitted.optimizer_steps),
        "train/tokens": fitted.tokens,
        "train/pad_fraction": fitted.pad / max(fitted.tokens + fitted.pad, 1.0),
        **eval_metrics,
    }
    log_results(cfg.tracking, fitted.loggers, metrics, fitted.optimizer_steps, predictions)
    return metrics


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


def _trusted_completed_record(out_dir: Path) -> RunRecord | None:
    """The directory's completed record, when what a completed run leaves is all there and readable:
    results, predictions and the adapter. Otherwise None (the run is done again: it resumes from its
    last checkpoint, i.e. saves and evaluates again), with a line saying why."""
    record = rundir.try_read_results(out_dir)
    if not record or record.get("status") != "completed":
        return None
    problem = _missing_outputs(out_dir, record)
    if problem:
        log.warning("%s says completed, but %s; running it again", out_dir, problem)
        return None
    return record


def _missing_outputs(out_dir: Path, record: RunRecord) -> str | None:
    from safetensors import safe_open

    evaluated = sum(v for k, v in record.get("metrics", {}).items() if k.startswith("eval/") and k.endswith("/n"))
    try:
        lines = rundir.read_predictions(out_dir)
    except UserError:
        return f"{rundir.PREDICTIONS} is missing or damaged"
    if len(lines) != evaluated:
        return f"{rundir.PREDICTIONS} has {len(lines)} of its {evaluated:.0f} items"
    if record.get("model", {}).get("adapter", "") is None:  # the base model evaluated as it is: no adapter to trust
        return None
    adapter = out_dir / rundir.ADAPTER
    try:
        read_json(adapter / rundir.ADAPTER_CONFIG)
    except UserError:
        return f"{rundir.ADAPTER}/{rundir.ADAPTER_CONFIG} is missing or damaged"
    try:
        with safe_open(str(adapter / rundir.ADAPTER_WEIGHTS), framework="pt") as weights:
            for name in weights.keys():
                weights.get_slice(name)
    except Exception:  # noqa: BLE001 - safetensors raises its own error types for missing and damaged files
        return f"{rundir.ADAPTER}/{rundir.ADAPTER_WEIGHTS} is missing or damaged"
    return None


@contextmanager
def _stage(record: dict, name: str):
    start = time.perf_counter()
    log.info("stage %s", name)
    try:
        yield
    except Exception as err:
        if (line := gpu_failure(name, err)) is None:
            raise
        raise UserError(line) from err  # one line, like every other failure; the run record says failed
    record["timing"][name] = round(time.perf_counter() - start, 3)


# What to change when a stage runs out of GPU memory, per stage.
_OUT_OF_MEMORY_ADVICE = {
    "data": "the data stage uses no GPU: another process holds its memory",
    "model": "the base model does not fit: adapter=qlora or adapter=qdora (4-bit weights), or a GPU with more memory",
    "train": "lower trainer.batch_size (raise trainer.accumulate_grad_batches to keep the examples per step), "
             "set trainer.gradient_checkpointing=true, or lower data.max_length",
    "eval": "lower eval.batch_size (eval.judge.batch_size for the judge); with eval.backend=vllm, lower "
            "eval.vllm_gpu_memory_utilization (the vLLM memory share), or eval.backend=hf",
}


def gpu_failure(stage: str, err: BaseException) -> str | None:
    """The one line for a CUDA out-of-memory or a distributed (NCCL) error raised in a stage, naming
    the stage and the settings to change; None for any other error."""
    torch = sys.modules.get("torch")  # such an error can only come from torch, already imported
    if torch is None:
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return f"stage {stage}: out of GPU memory ({first}); {_OUT_OF_MEMORY_ADVICE[stage]}"
    if torch.distributed.is_available() and isinstance(err, torch.distributed.DistError):
        return (f"stage {stage}: distributed error, {type(err).__name__} ({first}); check that trainer.devices and "
                "trainer.num_nodes match the GPUs and tasks the job has, and that every node reaches the others "
                "(NCCL_DEBUG=INFO says why NCCL failed); trainer=gpu trains on one GPU without NCCL")
    return None
