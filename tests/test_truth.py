"""The known-answer check of the report (report/truth.py): a sweep directory with `truth.json` gets the
planted truth beside what was found. The runs here are written by the test with per-item scores drawn
around a planted quadratic surface (the seven provenance configs as shares, three seeds), so the
ranking, the differences and the optimum are known."""

import json

import numpy as np
import pytest
from conftest import ROOT
from test_mixture import PLANTED_OPTIMUM, SOURCES, counts_of, draws, surface, write_run

from medinject.report.build import build_report
from medinject.util.errors import UserError

CONFIGS = {
    "native": (1, 0, 0), "synthetic": (0, 1, 0), "translated": (0, 0, 1), "native+synthetic": (0.5, 0.5, 0),
    "native+translated": (0.5, 0, 0.5), "synthetic+translated": (0, 0.5, 0.5), "native+synthetic+translated": (1 / 3, 1 / 3, 1 / 3),
}  # fmt: skip
METRIC = "eval/native/mcq/hamming"


def _sweep(root, flat: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = rng.normal(0, 0.1, 150)
    expected = {c: (0.3 if flat else float(surface(shares)[0])) for c, shares in CONFIGS.items()}
    for config, shares in CONFIGS.items():
        for s in (1, 2, 3):
            write_run(root / f"{config}-{s}", s, counts_of(shares, 99), draws(rng, expected[config], items, 1)[0], config=config)
    optimum = None if flat else dict(zip(SOURCES, map(float, PLANTED_OPTIMUM)))
    (root / "truth.json").write_text(json.dumps({"metric": METRIC, "expected": expected, "optimum": optimum, "flat": flat}))
    build_report(root, baseline="native", n_resamples=300)
    return json.loads((root / "truth_check.json").read_text())


def test_the_planted_ranking_differences_and_optimum_are_recovered(tmp_path):
    check = _sweep(tmp_path, flat=False)
    assert check["ranking"]["kendall_tau"] >= 0.8
    assert check["ranking"]["planted"][0] == "native+synthetic+translated"
    assert len(check["differences"]) == 6 and not check["missed"]
    big = [d for d in check["differences"] if d["should_be_significant"]]
    assert len(big) >= 4 and all(d["significant"] for d in big)
    optimum = check["optimum"]
    assert optimum["found"] is not None and optimum["largest_share_error"] <= 0.1 and optimum["region_covers_planted"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"Planted truth ({METRIC}) against what this report found" in page and "Kendall τ" in page
    picture = tmp_path / "truth.png"  # planted against found, the README's picture of the known-answer study
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 'alt="truth"' in page


def test_flat_truth_has_no_false_finding_and_no_optimum(tmp_path):
    check = _sweep(tmp_path, flat=True, seed=1)
    assert check["flat"] and check["false_findings"] == []
    assert check["optimum"]["found"] is None and check["optimum"]["no_optimum"] == "flat"


def test_a_malformed_truth_file_is_one_line_naming_it(tmp_path):
    write_run(tmp_path / "native-1", 1, {"native": 10}, np.full(5, 0.5), config="native")
    (tmp_path / "truth.json").write_text(json.dumps({"expected": {}}))
    with pytest.raises(UserError, match="truth.json: a truth file needs 'metric'"):
        build_report(tmp_path, baseline="native", n_resamples=50)


def test_the_readme_pictures_exist():
    """The README shows the known-answer report's picture (docs/known_answer.png): every image it links is in the repository."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert "docs/known_answer.png" in links
    for link in links:
        assert (ROOT / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
