"""The sweep's W&B dashboard: `python -m medinject.report.dashboard <sweep dir> [--publish]`.

One W&B report per sweep, built with `wandb-workspaces`: a run set filtered on the sweep's W&B group
and grouped by `job_type` (the data config), one bar chart per reported metric (mean over seeds with
standard-error bars, one bar per configuration), and a run comparer. A mixture design sweep
(`experiment=mixture_search`) adds, per test set's main metric, a 3-D scatter of the metric over two
sources' shares (the panels' counterpart of the report's ternary plot; W&B knows the requested
`mix.weights`, which the trained counts match up to rounding); a learning-curve sweep
(`experiment=budget_curve`) adds the metric against `mix.budget` on a log axis, one point per run.

W&B reports are objects on the server, so building one needs a login. Without `--publish` (and on
compute nodes that are offline) the command writes the report's specification to
the sweep dir (`rundir.DASHBOARD`); after `wandb sync` has uploaded the runs, the same command with
`--publish` turns that specification into the report and prints its URL.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from medinject.util import rundir
from medinject.util.cli import tool
from medinject.util.errors import UserError
from medinject.util.io import write_json_atomic

SPEC_VERSION = 1
SKIPPED_SUFFIXES = ("/n", "/n_unparsable", "/skipped_too_long")  # counts, not scores


def build_spec(sweep_dir: Path) -> dict:
    """The dashboard of a finished sweep, as plain data: runs' project and group, and the panels."""
    from medinject.report.runs import load_runs  # the sweep's runs, found the way the report finds them

    sweep_dir = Path(sweep_dir)
    runs = [run for run in load_runs(sweep_dir) if run.status == "completed"]
    if not runs:
        raise UserError(f"{sweep_dir}: no completed run to build a dashboard from")
    metrics = {k for run in runs for k in run.metrics if k.startswith("eval/") and not k.endswith(SKIPPED_SUFFIXES)}
    metrics.add("train/probe_loss_end")
    panels = [
        *({"type": "bar", "metric": m, "aggregate": "mean", "range": "stderr"} for m in sorted(metrics)),
        *_design_panels(runs, sorted(metrics)),
        {"type": "run_comparer", "diff_only": "split"},
    ]
    cfg = _run_config(runs[0].run_dir)
    logger_cfg = (cfg.get("logger") or {}).get("wandb") or {}
    group = (cfg.get("tracking") or {}).get("group") or cfg.get("sweep_name") or sweep_dir.name
    return {
        "version": SPEC_VERSION,
        "title": f"medinject: {group}",
        "entity": logger_cfg.get("entity"),
        "project": logger_cfg.get("project", "medinject"),
        "group": group,
        "filter": f"Group == '{group}'",
        "groupby": "job_type",
        "configs": sorted({run.config for run in runs}),
        "panels": panels,
    }


def _design_panels(runs: list, metrics: list[str]) -> list[dict]:
    """Scatter panels matching the report's mixture and learning-curve plots (module doc)."""
    from medinject.report.cells import MAIN_METRICS
    from medinject.report.curves import find_curves
    from medinject.report.mixture import find_design

    main = next((m for m in MAIN_METRICS if any(name.endswith(f"/{m}") for name in metrics)), None)
    names = [name for name in metrics if main and name.endswith(f"/{main}")]
    panels = []
    design = find_design(runs)
    if design is not None and len(design[1]) >= 2:
        first, last = design[1][0], design[1][-1]
        for name in names:
            panels.append(
                {"type": "scatter", "title": f"{name} over the shares of {first} and {last}", "x": f"config:mix.weights.{first}",
                 "y": f"config:mix.weights.{last}", "z": f"summary:{name}", "log_x": False}
            )  # fmt: skip
    if find_curves(runs):
        for name in names:
            panels.append({"type": "scatter", "title": f"{name} vs training examples", "x": "config:mix.budget", "y": f"summary:{name}", "z": None, "log_x": True})
    return panels


def _axis(name: str | None):
    """`config:<key>` / `summary:<metric>` -> the wandb_workspaces metric object."""
    import wandb_workspaces.reports.v2 as wr

    if name is None:
        return None
    kind, _, key = name.partition(":")
    return wr.Config(key) if kind == "config" else wr.SummaryMetric(key)


def to_report(spec: dict, entity: str | None = None):
    """The `wandb_workspaces` report of a specification (constructed offline; `.save()` publishes)."""
    import wandb_workspaces.reports.v2 as wr

    entity = entity or spec.get("entity") or ""
    runset = wr.Runset(entity=entity, project=spec["project"], name=spec["group"], filters=spec["filter"], groupby=[spec["groupby"]])
    panels = []
    for panel in spec["panels"]:
        if panel["type"] == "bar":
            panels.append(
                wr.BarPlot(
                    title=panel["metric"],
                    metrics=[panel["metric"]],
                    groupby=spec["groupby"],
                    groupby_aggfunc=panel["aggregate"],
                    groupby_rangefunc=panel["range"],
                )
            )
        elif panel["type"] == "scatter":
            panels.append(
                wr.ScatterPlot(title=panel["title"], x=_axis(panel["x"]), y=_axis(panel["y"]), z=_axis(panel["z"]), log_x=panel["log_x"])
            )
        elif panel["type"] == "run_comparer":
            panels.append(wr.RunComparer(diff_only=panel["diff_only"]))
        else:
            raise UserError(f"dashboard spec: unknown panel type {panel['type']!r}")
    blocks = [
        wr.H1(spec["title"]),
        wr.P(f"The provenance configurations of W&B group '{spec['group']}', one bar per data config (mean over seeds, standard error)."),
        wr.PanelGrid(runsets=[runset], panels=panels),
    ]
    return wr.Report(project=spec["project"], entity=entity, title=spec["title"], blocks=blocks, width="fluid")


def _run_config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / rundir.CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{run_dir / rundir.CONFIG}: unreadable ({type(err).__name__})") from err


@tool
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medinject.report.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--publish", action="store_true", help="create the report on W&B (needs `wandb login`)")
    parser.add_argument("--entity", help="W&B entity (default: the runs' logger.wandb.entity, else your default entity)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # what it did is printed below
    spec = build_spec(args.sweep_dir)
    write_json_atomic(args.sweep_dir / rundir.DASHBOARD, spec)
    print(f"dashboard specification: {args.sweep_dir / rundir.DASHBOARD} ({len(spec['panels']) - 1} metric panels, group {spec['group']!r})")
    if not args.publish:
        print(f"to publish: `wandb sync {args.sweep_dir}/*/wandb/offline-run-*` then `python -m medinject.report.dashboard {args.sweep_dir} --publish`")
        return 0
    report = to_report(spec, args.entity)
    report.save()
    print(f"published: {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
