"""Re-evaluate a trained run without training: `python -m medinject.eval <run dir> [key=value ...]`.

The run's saved config and adapter are loaded, the overrides (dot-list, e.g.
`eval.judge.backend=openai eval.judge.base_url=http://host:8000/v1 eval.judge.model=NAME`) applied,
and the evaluation runs again. `predictions.jsonl` is replaced and the `eval/...` metrics of
`results.json` are replaced by the new ones (both written atomically); the training metrics stay.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from medinject.config import RunConfig, check_settings
from medinject.model.preflight import check_run_prerequisites
from medinject.util.errors import UserError, one_line
from medinject.util.io import read_json, write_json_atomic, write_jsonl_atomic

log = logging.getLogger("medinject.eval")


def reevaluate(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    results_path, config_path, adapter = run_dir / "results.json", run_dir / "config.yaml", run_dir / "adapter"
    for path in (results_path, config_path, adapter / "adapter_config.json"):
        if not path.exists():
            raise UserError(f"{run_dir}: not a trained run directory ({path.name} missing)")
    results = read_json(results_path)
    if results.get("status") != "completed":
        raise UserError(f"{results_path}: status is {results.get('status')!r}; only completed runs can be re-evaluated")
    saved = OmegaConf.load(config_path)
    judge = saved.get("eval", {}).get("judge", {})
    if isinstance(judge.get("rubric"), str) and judge.rubric not in ("released", "medinject"):
        # a run from before eval.judge.rubric named a choice: its value is the French rubric's text
        judge.medinject_rubric, judge.rubric = judge.rubric, "medinject"
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), saved, OmegaConf.from_dotlist(overrides))
    except Exception as err:  # omegaconf validation errors: one line
        raise UserError(f"{getattr(err, 'full_key', None) or 'overrides'}: {str(err).splitlines()[0]}") from None
    cfg.paths.output_dir = str(run_dir)
    check_settings(cfg)
    check_run_prerequisites(cfg)  # the devices asked for, the model folder: before the seconds the imports below take

    from peft import PeftModel

    from medinject.data.prepare import load_test_sets
    from medinject.eval.runner import eval_items, evaluate_model, evaluation_record
    from medinject.model.load import load_tokenizer_and_model

    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    device = cfg.eval.device or _default_device(cfg.trainer.accelerator)
    try:
        model = PeftModel.from_pretrained(base, str(adapter)).to(device)
    except Exception as err:  # noqa: BLE001 - safetensors, json and peft each raise their own types
        raise UserError(f"{adapter}: cannot load the adapter ({one_line(err)}); the files are damaged") from None
    test_rows = {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg).items()}
    started = time.perf_counter()
    metrics, predictions = evaluate_model(model, tokenizer, cfg, eval_items(cfg, test_rows))  # eval.backend decides how
    write_jsonl_atomic(run_dir / "predictions.jsonl", predictions)
    results["metrics"] = {**{k: v for k, v in results["metrics"].items() if not k.startswith("eval/")}, **metrics}
    results["timing"]["reevaluate"] = round(time.perf_counter() - started, 3)
    results.setdefault("devices", {})["eval"] = device
    results["eval"] = evaluation_record(cfg)
    results["reevaluated"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": overrides}
    write_json_atomic(results_path, results)  # the writer masks credentials
    return metrics


def _default_device(accelerator: str) -> str:
    """No run placed the model here: the first GPU when the run's trainer used one and CUDA is
    there, else the CPU."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda:0"
    return "cpu"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medinject.eval", description="Re-evaluate a trained run.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        metrics = reevaluate(args.run_dir, args.overrides)
    except UserError as err:
        print(f"medinject: error: {err}", file=sys.stderr)
        sys.exit(2)
    for name, value in sorted(metrics.items()):
        print(f"{name}\t{value:.4f}")


