"""The `medinject` command: one entry point, a subcommand per tool.

    medinject train [overrides]          the Hydra app: one run, or a sweep with -m (what `python train.py` runs)
    medinject prepare [overrides]        the data stage alone (manifest and contamination audit)
    medinject eval RUN_DIR [overrides]   re-evaluate a trained run; --model PATH --out DIR evaluates any model
    medinject report SWEEP_DIR           the sweep report
    medinject review export|import ...   blinded human review of open answers
    medinject dashboard SWEEP_DIR        the W&B dashboard specification (--publish: the report)
    medinject status SWEEP_DIR           every job of a sweep and its state
    medinject planted OUT                known-answer data
    medinject lm-eval-tasks OUT          the test sets as lm-eval tasks

Each subcommand is the tool `python -m <module>` runs, with the same arguments, and ends as every
medinject command ends (`medinject.util.cli.ending`): one line on stderr and exit status 2 for bad
input or a write the disk refuses, 128 + the signal's number for a signal.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from omegaconf import DictConfig

# subcommand -> (module, its entry function, what it does)
COMMANDS = {
    "train": ("medinject.commands", "train", "one run, or a sweep with -m (the Hydra app of train.py)"),
    "prepare": ("medinject.data.prepare", "main", "the data stage alone: the manifest and the contamination audit"),
    "eval": ("medinject.eval.reevaluate", "main", "re-evaluate a trained run, or evaluate any model (--model)"),
    "report": ("medinject.report.cli", "main", "the sweep report: tables, statistics, plots, HTML"),
    "review": ("medinject.report.review", "main", "blinded human review of open answers (export, import)"),
    "dashboard": ("medinject.report.dashboard", "main", "the sweep's W&B dashboard"),
    "status": ("medinject.sweep.status", "main", "every job of a sweep and its state"),
    "planted": ("medinject.data.planted", "main", "known-answer data and its truth"),
    "lm-eval-tasks": ("medinject.eval.lm_eval_tasks", "main", "the test sets as lm-eval tasks"),
}


def _run_task(cfg: DictConfig):
    from medinject.run import run

    return run(cfg)


def train(argv: list[str] | None = None, config_dir: Path | str | None = None) -> None:
    """The Hydra app: compose `train.yaml` (of `config_dir`, default `medinject.config.conf_dir()`)
    with the overrides in `argv` and hand the config to `medinject.run.run`."""
    from medinject.config import conf_dir, register
    from medinject.util.cli import hydra_app

    register()  # the schema and resolvers, before Hydra composes
    hydra_app(_run_task, str(config_dir or conf_dir()), argv)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return "usage: medinject COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) + "\n\n`medinject COMMAND --help` says more.\n"


def main(argv: list[str] | None = None):
    """`medinject COMMAND [ARGS...]`: the subcommand's tool on the rest of the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"medinject: error: no command {name!r}; the commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    sys.argv = [f"{sys.argv[0]} {name}", *rest]  # what the tool, and Hydra, read as their command line
    return getattr(importlib.import_module(module), function)(rest)
