"""Re-evaluate a trained run without training: `python -m medinject.eval <run dir> [key=value ...]`
(a `data=base` run directory too: its base model, no adapter). With `--model PATH_OR_HUB_ID
[--adapter PATH] --out DIR [key=value ...]` it evaluates a model medinject did not train instead
(`medinject.eval.untrained`).

The run's saved config and adapter are loaded, the overrides (dot-list, e.g.
`eval.judge.backend=openai eval.judge.base_url=http://host:8000/v1 eval.judge.model=NAME`) applied,
and the evaluation runs again. The predictions are replaced and the `eval/...` metrics of the run
record are replaced by the new ones (both written atomically); the training metrics stay.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from medinject.config import RunConfig, check_settings
from medinject.model.preflight import check_run_prerequisites
from medinject.util import rundir
from medinject.util.cli import tool
from medinject.util.errors import UserError, one_line
from medinject.util.io import check_writable

log = logging.getLogger("medinject.eval")


def reevaluate(run_dir: Path, overrides: list[str]) -> dict[str, float]:
    results_path, config_path, adapter = run_dir / rundir.RESULTS, run_dir / rundir.CONFIG, run_dir / rundir.ADAPTER
    for path in (results_path, config_path):
        if not path.exists():
            raise UserError(f"{run_dir}: not a trained run directory ({path.name} missing)")
    results = rundir.read_results(run_dir)
    untrained = (results.get("model") or {}).get("adapter", "") is None  # data=base: the base model, no adapter
    if not untrained and not (adapter / rundir.ADAPTER_CONFIG).exists():
        raise UserError(f"{run_dir}: not a trained run directory ({rundir.ADAPTER_CONFIG} missing)")
    if results.get("status") != "completed":
        raise UserError(f"{results_path}: status is {results.get('status')!r}; only completed runs can be re-evaluated")
    check_writable(run_dir)  # its predictions and record are replaced: before the minutes evaluating takes
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
    from medinject.eval.untrained import default_device
    from medinject.model.load import load_tokenizer_and_model

    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    device = cfg.eval.device or default_device(cfg.trainer.accelerator)
    try:
        model = (base if untrained else PeftModel.from_pretrained(base, str(adapter))).to(device)
    except Exception as err:  # noqa: BLE001 - safetensors, json and peft each raise their own types
        raise UserError(f"{adapter}: cannot load the adapter ({one_line(err)}); the files are damaged") from None
    test_rows = {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg.eval.test_sets, cfg.paths).items()}
    started = time.perf_counter()
    metrics, predictions = evaluate_model(model, tokenizer, cfg, eval_items(cfg, test_rows))  # eval.backend decides how
    rundir.write_predictions(run_dir, predictions)
    results["metrics"] = {**{k: v for k, v in results["metrics"].items() if not k.startswith("eval/")}, **metrics}
    results["timing"]["reevaluate"] = round(time.perf_counter() - started, 3)
    results.setdefault("devices", {})["eval"] = device
    results["eval"] = evaluation_record(cfg)
    results["reevaluated"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": overrides}
    rundir.write_results(run_dir, results)  # the writer masks credentials
    return metrics


@tool
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m medinject.eval",
        description="Re-evaluate a trained run (RUN_DIR), or evaluate any model without training (--model ... --out DIR).",
    )
    parser.add_argument("run_dir", nargs="?", help="a run directory to re-evaluate (not with --model)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--model", help="evaluate this model (a local folder or a hub id) as the base row of a sweep is evaluated")
    parser.add_argument("--adapter", help="with --model: a peft adapter folder to attach")
    parser.add_argument("--out", type=Path, help="with --model: the run directory to write")
    parser.add_argument("--name", help="with --model: its name in the report (default: the model folder's name)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.model is not None:
        from medinject.eval.untrained import evaluate_any_model

        if args.out is None:
            raise UserError("--model: give the run directory to write with --out DIR")
        overrides = ([args.run_dir] if args.run_dir else []) + args.overrides  # no run dir with --model: all are overrides
        metrics = evaluate_any_model(args.model, args.out, overrides, args.adapter, args.name)["metrics"]
    elif args.run_dir is None:
        raise UserError("give a run directory to re-evaluate, or --model PATH_OR_HUB_ID --out DIR")
    else:
        metrics = reevaluate(Path(args.run_dir), args.overrides)
    for name, value in sorted(metrics.items()):
        print(f"{name}\t{value:.4f}")


