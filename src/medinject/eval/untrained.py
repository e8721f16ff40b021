"""Evaluate a model without training it: the base model as a row of the study (`data=base`), or a
model medinject did not train (`python -m medinject.eval --model PATH_OR_HUB_ID [--adapter PATH]`).

Everything but training is what a fine-tuned run does: the same test sets and items (`eval_items`),
the same protocol, prompts, decodings, metrics and judge (`evaluate_model`), the base weights loaded
as `adapter.quantization` says (a QLoRA sweep's runs are evaluated on a 4-bit base, so its base row
is too; `adapter=lora` loads it unquantized), on `eval.device` or the first GPU when the trainer would
use one. No adapter is attached unless one is given; nothing is trained.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from medinject.config import DataConfig, EvalSettings
from medinject.util import rundir
from medinject.util.errors import UserError, one_line
from medinject.util.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def is_untrained(data: DataConfig) -> bool:
    """A data config with no training source (`data=base`) evaluates its model as it is."""
    return not data.sources


def default_device(accelerator: str) -> str:
    """No trainer placed the model: the first GPU when the trainer would use one and CUDA is there,
    else the CPU."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda:0"
    return "cpu"


def evaluate_untrained(settings: EvalSettings, label: str, seed: int, accelerator: str, out_dir: Path, record: rundir.RunRecord,
                       adapter: str | None = None) -> dict[str, float]:
    """Evaluate `settings.model` (with the peft adapter at `adapter`, if given) on every configured
    test set, write the manifest and the predictions into `out_dir`, fill the run record's `data`,
    `model`, `devices`, `eval` and `timing` as a trained run does, and return the metrics. `label`
    names the row (the data config's name), `seed` is recorded as a trained run's is, and
    `accelerator` (`trainer.accelerator`) picks the device when `eval.device` does not."""
    from medinject.data.prepare import load_test_sets
    from medinject.eval.runner import check_evaluation, eval_items, evaluate_model, evaluation_record, model_device
    from medinject.model.load import load_tokenizer_and_model, parameter_counts

    timing = record.setdefault("timing", {})
    started = time.perf_counter()
    loaded = load_test_sets(settings.eval.test_sets, settings.paths)
    test_rows = {name: sets.rows.examples() for name, sets in loaded.items()}
    items = eval_items(settings, test_rows)
    check_evaluation(settings)
    files = {path: digest for sets in loaded.values() for path, digest in sets.files.items()}
    manifest = {
        "data_config": label,
        "sources": {},
        "test_sets": {name: {"rows": len(rows), "by_type": _by_type(rows)} for name, rows in sorted(test_rows.items())},
        "seed": seed,
        "n_examples": 0,
        "counts": {},
        "files": dict(sorted(files.items())),
    }
    write_json_atomic(out_dir / rundir.MANIFEST, manifest)
    record["data"] = {"config": label, "sources": [], "mix": None, "seed": seed, "n_examples": 0, "counts": {}}
    timing["data"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    tokenizer, model = load_tokenizer_and_model(settings.model, settings.adapter)
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except Exception as err:  # noqa: BLE001 - safetensors, json and peft each raise their own types
            raise UserError(f"--adapter {adapter}: cannot load the adapter ({one_line(err)})") from None
    device = settings.eval.device or default_device(accelerator)
    model = model.to(device)
    _, total = parameter_counts(model)
    record["model"] = {
        "name": settings.model.name,
        "path": settings.model.path,
        "adapter": str(adapter) if adapter is not None else None,
        "method": None,
        "quantization": settings.adapter.quantization.value if settings.adapter.quantization else None,
        "trainable_params": 0,
        "total_params": total,
    }
    record["train"] = {"optimizer_steps": 0, "untrained": True}
    timing["model"] = round(time.perf_counter() - started, 3)
    log.info("model %s%s: evaluated as it is, no training (%d parameters)", settings.model.name,
             f" with the adapter {adapter}" if adapter else "", total)

    started = time.perf_counter()
    record.setdefault("devices", {})["eval"] = model_device(model)
    record["eval"] = evaluation_record(settings)
    metrics, predictions = evaluate_model(model, tokenizer, settings, items)
    rundir.write_predictions(out_dir, predictions)
    timing["eval"] = round(time.perf_counter() - started, 3)
    return {"train/optimizer_steps": 0.0, **metrics}


def _by_type(rows) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        found[row.type] = found.get(row.type, 0) + 1
    return found


def evaluate_any_model(model: str, out_dir: Path, overrides: list[str], adapter: str | None = None, name: str | None = None) -> rundir.RunRecord:
    """`python -m medinject.eval --model PATH_OR_HUB_ID [--adapter PATH] --out DIR [overrides]`: the
    production config composed as train.py composes it (`data=base`, then the overrides), the model
    and its name set, evaluated without training into `out_dir`, which then holds what a run
    directory holds for the report (`medinject.util.rundir`: the run record, predictions, config and
    manifest). Returns the run record it wrote."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from medinject.config import DataSettings, check_settings, conf_dir, register, to_container

    out_dir = Path(out_dir).resolve()
    if adapter is not None and not (Path(adapter) / rundir.ADAPTER_CONFIG).is_file():
        raise UserError(f"--adapter {adapter}: not a peft adapter folder (no {rundir.ADAPTER_CONFIG})")
    label = name or Path(model.rstrip("/")).name
    register()
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = compose("train", overrides=["data=base", *overrides])
    except Exception as err:  # noqa: BLE001 - Hydra's compose errors: one line
        raise UserError(f"overrides: {str(err).splitlines()[0]}") from None
    with open_dict(cfg):
        cfg.pop("hydra", None)
        cfg.model.path, cfg.model.name, cfg.model.build_tiny = str(model), label, None
        cfg.data.name = label
        cfg.paths.output_dir = str(out_dir)
    check_settings(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / rundir.CONFIG, OmegaConf.to_yaml(to_container(cfg)))
    record = rundir.new_record(out_dir)
    started = time.perf_counter()
    try:
        from medinject.data.inputs import input_hashes

        record["inputs"] = input_hashes(DataSettings.of(cfg))
        record["metrics"] = evaluate_untrained(EvalSettings.of(cfg), label, int(cfg.seed), str(cfg.trainer.accelerator), out_dir, record, adapter)
        record["status"] = "completed"
    except BaseException as err:
        record["status"] = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
        record["error"] = one_line(err)
        raise
    finally:
        record["timing"]["total"] = round(time.perf_counter() - started, 3)
        rundir.write_results(out_dir, record)
    return record
