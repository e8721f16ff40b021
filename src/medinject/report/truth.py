"""A planted truth beside what the report found: the known-answer check of a sweep.

A sweep whose data were generated with a known answer has `truth.json` in its directory:

    {"metric": "eval/<test set>/<task>/<metric>", "expected": {<data config>: score, ...},
     "optimum": {<source>: share, ...} | null, "flat": true | false}

`truth_check` compares the report's findings on that metric with it: the ranking of the configs
(Kendall's tau between the planted and the found means, scipy's), each config's planted and found
difference from the baseline with its Holm-corrected p and verdict (a planted difference of at least
twice the MDE should be significant; with `flat` truth nothing should be), and the mixture's optimum
and 95% region against the planted shares. It reads nothing but the report's own results.
"""

from __future__ import annotations

from pathlib import Path

from scipy.stats import kendalltau

from medinject.util.errors import UserError
from medinject.util.io import read_json
from medinject.util.rundir import TRUTH


def read_truth(sweep_dir: Path) -> dict | None:
    """The sweep's planted truth, or None when it has none; a malformed one is a one-line error."""
    path = sweep_dir / TRUTH
    if not path.is_file():
        return None
    truth = read_json(path)
    if not isinstance(truth, dict) or not isinstance(truth.get("metric"), str) or not isinstance(truth.get("expected"), dict):
        raise UserError(f"{path}: a truth file needs 'metric' (a metric name) and 'expected' ({{data config: score}})")
    return truth


def truth_check(truth: dict, cells: dict, baseline: str | None, mixture: dict | None, alpha: float = 0.05) -> dict:
    """The comparison of `truth` with the report's cells ({(config, metric): Cell}) and mixture report."""
    metric = truth["metric"]
    found = {config: cell.estimate.mean for (config, name), cell in cells.items() if name == metric}
    shared = [c for c in truth["expected"] if c in found]
    check: dict = {"metric": metric, "flat": bool(truth.get("flat")), "configs": shared}
    if len(shared) >= 2:
        tau = kendalltau([truth["expected"][c] for c in shared], [found[c] for c in shared])
        check["ranking"] = {
            "planted": sorted(shared, key=lambda c: -truth["expected"][c]),
            "found": sorted(shared, key=lambda c: -found[c]),
            "kendall_tau": None if tau.statistic != tau.statistic else float(tau.statistic),  # NaN: a tie everywhere
        }
    differences = []
    if baseline in truth["expected"]:
        for config in shared:
            cell = cells.get((config, metric))
            if config == baseline or cell is None or cell.comparison is None:
                continue
            planted = truth["expected"][config] - truth["expected"][baseline]
            mde = (cell.power or {}).get("mde")
            significant = cell.p_holm is not None and cell.p_holm < alpha
            differences.append(
                {"config": config, "planted": planted, "found": cell.comparison.diff, "ci": [cell.comparison.low, cell.comparison.high],
                 "p_holm": cell.p_holm, "mde": mde, "significant": significant,
                 "should_be_significant": bool(mde is not None and abs(planted) >= 2 * mde and not truth.get("flat"))}
            )  # fmt: skip
    check["differences"] = differences
    check["false_findings"] = [d["config"] for d in differences if d["significant"] and truth.get("flat")]
    check["missed"] = [d["config"] for d in differences if d["should_be_significant"] and not d["significant"]]
    entry = ((mixture or {}).get("metrics") or {}).get(metric)
    if entry is not None:
        planted = truth.get("optimum")
        stated = entry.get("optimum")
        optimum: dict = {"planted": planted, "found": stated, "no_optimum": entry.get("no_optimum")}
        if planted and stated:
            optimum["largest_share_error"] = max(abs(stated.get(s, 0.0) - planted.get(s, 0.0)) for s in set(planted) | set(stated))
            region = (entry.get("optimum_region") or {}).get("points") or []
            step = (entry.get("optimum_region") or {}).get("lattice_step", 0.05)
            optimum["region_covers_planted"] = any(
                max(abs(p.get(s, 0.0) - planted.get(s, 0.0)) for s in planted) <= step / 2 + 1e-9 for p in region
            )
        check["optimum"] = optimum
    return check


def truth_rows(check: dict) -> list[list[str]]:
    """Rows (what, planted, found) of the report's table for a truth check."""
    rows = []
    ranking = check.get("ranking")
    if ranking:
        tau = ranking["kendall_tau"]
        rows.append(["ranking", " > ".join(ranking["planted"]), " > ".join(ranking["found"]) + f" (Kendall τ {'n/a' if tau is None else f'{tau:.2f}'})"])
    for d in check["differences"]:
        p = "n/a" if d["p_holm"] is None else f"{d['p_holm']:.3g}"
        mde = "n/a" if d["mde"] is None else f"{d['mde']:.3f}"
        rows.append([f"Δ {d['config']}", f"{d['planted']:+.3f}", f"{d['found']:+.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}], Holm p {p}, MDE {mde}"])
    optimum = check.get("optimum")
    if optimum is not None:
        planted = ", ".join(f"{s} {v:.2f}" for s, v in (optimum["planted"] or {}).items()) or "none (flat)"
        if optimum["found"]:
            found = ", ".join(f"{s} {v:.2f}" for s, v in optimum["found"].items())
            if "largest_share_error" in optimum:
                found += f" (largest share error {optimum['largest_share_error']:.2f}; 95% region {'covers' if optimum['region_covers_planted'] else 'misses'} the planted point)"
        else:
            found = f"no optimum ({optimum['no_optimum']})"
        rows.append(["optimum", planted, found])
    if check["flat"]:
        rows.append(["false findings", "none", ", ".join(check["false_findings"]) or "none"])
    elif check["missed"]:
        rows.append(["missed (planted >= 2 MDE, not significant)", "none", ", ".join(check["missed"])])
    return rows
