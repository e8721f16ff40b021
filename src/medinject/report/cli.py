"""`python -m medinject.report <sweep dir>` (`medinject report`): the sweep report (`medinject.report.build`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medinject.report.build import build_report
from medinject.report.cells import MAIN_METRICS
from medinject.util.cli import tool


@tool
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m medinject.report", description="Tables, plots and an HTML page comparing a sweep's data configs."
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (with its sweep summary, or run directories below it)")
    parser.add_argument(
        "--baseline", default=None, help="data config the others are compared with (default: native, when the sweep has native runs)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--main-metric", default=None, help=f"<task>/<metric> of the heatmap (default: first found of {', '.join(MAIN_METRICS)})")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates (default: 2000)")
    parser.add_argument("--pilot", type=Path, default=None, help="a pilot sweep (2+ seeds per config): its seed variance lets a one-seed mixture design be tested")
    parser.add_argument("--effect", type=float, default=None, help="the difference whose needed seeds the power file states (default: each comparison's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    baseline = args.baseline or "native"
    page = build_report(
        args.sweep_dir, baseline, args.out, args.main_metric, args.resamples, strict_baseline=args.baseline is not None, pilot=args.pilot, effect=args.effect
    )
    print(page)
