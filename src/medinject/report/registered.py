"""Registered predictions of the mixture search (`mixture.rounds`), scored, and the report's table of them.

Before a round of the search runs, the sweeper writes `predictions_round<N>.json` in the sweep dir:
each new point's fitted score and the 95% prediction interval of its observed mean, seed noise
included (`medinject.report.search`). The file is never rewritten. When the round's runs have ended,
`score_predictions` compares them with what the runs gave, and the round's record `round<N>.json`
holds the score: on points the surface was not fitted on, the honest test of it.

* `spearman`: rank correlation of predicted and observed means (scipy.stats.spearmanr; None with
  fewer than 3 points or a constant side: no ranking to compare);
* `coverage`: the share of observed means inside their intervals (95% is what they promise);
* `mae`: the mean absolute difference of predicted and observed means.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from scipy import stats

PREDICTIONS = "predictions_round{n}.json"
ROUND = "round{n}.json"
_ROUND_FILE = re.compile(r"round(\d+)\.json$")


def score_predictions(predicted: list[float | None], intervals: list[list[float] | None], observed: list[float | None]) -> dict:
    """How registered predictions did, over the points with a prediction and an observed mean."""
    rows = [(p, iv, o) for p, iv, o in zip(predicted, intervals, observed)
            if p is not None and iv is not None and o is not None and math.isfinite(o)]  # fmt: skip
    if not rows:
        return {"n_points": 0, "spearman": None, "spearman_p": None, "coverage": None, "mae": None}
    p = np.array([r[0] for r in rows], dtype=float)
    o = np.array([r[2] for r in rows], dtype=float)
    inside = [lo <= obs <= hi for (_, (lo, hi), obs) in rows]
    rho = p_value = None
    if len(rows) >= 3 and np.ptp(p) > 0 and np.ptp(o) > 0:
        result = stats.spearmanr(p, o)
        rho, p_value = float(result.statistic), float(result.pvalue)
    return {"n_points": len(rows), "spearman": rho, "spearman_p": p_value, "coverage": float(np.mean(inside)),
            "mae": float(np.mean(np.abs(p - o))), "inside": inside}  # fmt: skip


def round_records(sweep_dir: Path) -> list[dict]:
    """The search's round records in round order (none for a sweep without rounds); unreadable ones skipped."""
    found = []
    for path in Path(sweep_dir).glob("round*.json"):
        match = _ROUND_FILE.fullmatch(path.name)
        if not match:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            found.append((int(match.group(1)), record))
    return [record for _, record in sorted(found, key=lambda pair: pair[0])]


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def rounds_section(sweep_dir: Path) -> tuple[str, list[str], list[list[str]], list[str]] | None:
    """(title, header, rows, notes) of the report's table of the search's rounds, or None without rounds."""
    records = round_records(sweep_dir)
    if not records:
        return None
    header = ["round", "points", "fit before the round", "metric", "Spearman ρ", "in 95% interval", "mean abs. error", "status"]
    rows = []
    for record in records:
        fit = record.get("fit") or {}
        score = record.get("score") or {}
        fit_text = (f"{fit.get('model', '').replace('scheffe_', 'Scheffé ')}, {fit.get('n_runs')} runs, {fit.get('residual_df')} df"
                    if fit.get("model") else record.get("fit_reason", "no fit"))  # fmt: skip
        coverage = score.get("coverage")
        inside = f"{sum(score.get('inside', []))}/{score.get('n_points')} ({coverage:.0%})" if coverage is not None else "—"
        rows.append([str(record.get("round")), str(len(record.get("points", []))), fit_text, record.get("metric", ""),
                     _num(score.get("spearman")), inside, _num(score.get("mae")), record.get("status", "")])  # fmt: skip
    notes = [
        "rounds: each round's points were chosen by expected improvement on the Scheffé surface fitted to the runs before it "
        "(round<N>.json: points, why, the fit); their predicted scores and 95% prediction intervals (seed noise included) "
        "were written to predictions_round<N>.json before the round ran, and are scored here against the runs' means"
    ]
    return "Mixture search: registered predictions per round", header, rows, notes
