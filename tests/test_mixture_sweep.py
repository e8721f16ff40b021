"""`experiment=mixture_search` and `experiment=budget_curve` through the real CLI: the shipped designs
as planned, and a real tiny mixture sweep (the simplex-centroid design, seven runs) whose report has
the mixture model, the ternary plot and the demo banner, renders in headless Chromium, and is rebuilt
the same from the run directories alone by `python -m medinject.report`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from medinject.report.render import DEMO_BANNER

SMALL = (  # the command, shrunk further so that the seven runs take seconds each
    "experiment=mixture_search",
    "model=tiny",
    "trainer=cpu",
    "logger=none",
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "eval.limit=4",
    "eval.tasks=[mcqu,mcq]",
    "mix.budget=24",
)
CENTROID_DESIGN = (  # vertices, edge midpoints, centroid: the seven provenance configurations as shares
    "mix.weights={native:1,synthetic:0,translated:0},{native:0,synthetic:1,translated:0},{native:0,synthetic:0,translated:1},"
    "{native:0.5,synthetic:0.5,translated:0},{native:0.5,synthetic:0,translated:0.5},{native:0,synthetic:0.5,translated:0.5},"
    "{native:0.3333333,synthetic:0.3333333,translated:0.3333334}"
)


def _planned(*overrides: str) -> list[str]:
    result = cli("train.py", "-m", *overrides, "dry_run=true", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.startswith("training examples:")]


def test_shipped_designs_plan_every_point_with_zero_shares_left_out():
    mixture = _planned("experiment=mixture_search")
    assert len(mixture) == 10
    assert mixture[:3] == ["training examples: 100 (native 100)", "training examples: 100 (synthetic 100)", "training examples: 100 (translated 100)"]
    assert "training examples: 100 (native 33, synthetic 33, translated 34)" in mixture
    assert "training examples: 100 (native 60, synthetic 20, translated 20)" in mixture
    curve = _planned("experiment=budget_curve", "mix.budget=8,16,32")  # a budget on the command line replaces the list
    assert sorted(curve) == sorted(f"training examples: {n} ({s} {n})" for s in ("native", "synthetic", "translated") for n in (8, 16, 32))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixture_sweep")
    result = cli("train.py", "-m", *SMALL, CENTROID_DESIGN, f"hydra.sweep.dir={root}", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "sweep_summary.json").read_text())["counts"]["completed"] == 7
    return root


def test_the_sweep_writes_a_mixture_model_per_metric(sweep_dir):
    mixture = json.loads((sweep_dir / "mixture.json").read_text())
    assert mixture["budget"] == 24 and mixture["components"] == ["native", "synthetic", "translated"]
    shares = sorted(tuple(p["shares"].values()) for p in mixture["design"])
    assert shares[-1] == (1.0, 0.0, 0.0) and (0.3333, 0.3333, 0.3333) in shares  # 8 / 8 / 8 of 24, from data.counts
    assert {"eval/native/mcq/hamming_constrained", "eval/translated/mcqu/em_constrained"} <= set(mixture["metrics"])
    for name, entry in mixture["metrics"].items():
        assert entry["model"] == "scheffe_quadratic", name  # 7 points: 6 coefficients and one residual df
        # one seed per point, random model: no optimum from noise, the best point only as descriptive
        assert entry["optimum"] is None and entry["reason"], name
        assert entry["no_optimum"] in ("one_seed", "flat"), name
        if entry.get("descriptive_best"):
            assert sum(entry["descriptive_best"]["shares"].values()) == pytest.approx(1.0, abs=1e-3)
            assert entry["fit"]["n_points"] == 7
    import matplotlib.image

    assert matplotlib.image.imread(sweep_dir / "mixture.png").std() > 0.01
    page = (sweep_dir / "report.html").read_text(encoding="utf-8")
    assert page.index(DEMO_BANNER) < page.index("<table")
    assert "Mixture model at 24 examples" in page
    assert (sweep_dir / "summary.md").read_text(encoding="utf-8").splitlines()[2] == f"> **{DEMO_BANNER}**"


def test_the_report_rebuilds_mixture_json_from_the_run_directories(sweep_dir, tmp_path):
    copy = tmp_path / "copy"
    for run in sorted(p.parent for p in sweep_dir.glob("*/results.json")):
        (copy / run.name).mkdir(parents=True)
        for name in ("results.json", "predictions.jsonl", "config.yaml"):
            shutil.copy2(run / name, copy / run.name / name)
    result = cli("-m", "medinject.report", str(copy))  # no sweep summary, no native config: no baseline
    assert result.returncode == 0, result.stderr[-3000:]
    rebuilt = json.loads((copy / "mixture.json").read_text())
    original = json.loads((sweep_dir / "mixture.json").read_text())
    assert rebuilt["metrics"] == original["metrics"]
    assert (copy / "mixture.png").is_file()


def test_the_dashboard_gets_a_response_surface_panel_per_main_metric(sweep_dir):
    from medinject.report.dashboard import build_spec, to_report

    spec = build_spec(sweep_dir)
    assert json.loads((sweep_dir / "dashboard.json").read_text()) == spec  # written when the multirun ended
    scatters = [p for p in spec["panels"] if p["type"] == "scatter"]
    assert {p["z"] for p in scatters} == {"summary:eval/native/mcqu/em_constrained", "summary:eval/translated/mcqu/em_constrained"}
    assert all(p["x"] == "config:mix.weights.native" and p["y"] == "config:mix.weights.translated" for p in scatters)
    (grid,) = [block for block in to_report(spec, entity="someone").blocks if type(block).__name__ == "PanelGrid"]
    assert sum(type(p).__name__ == "ScatterPlot" for p in grid.panels) == 2


def test_the_mixture_report_renders_in_headless_chromium(sweep_dir, tmp_path, chromium):
    page = (sweep_dir / "report.html").as_uri()
    shot = chromium.screenshot(page, tmp_path / "shot.png", 1400, 2000)
    from PIL import Image

    with Image.open(shot) as image:
        gray = np.asarray(image.convert("L"))
    assert (gray < 128).mean() > 0.005, "the screenshot is blank"
    dom = chromium.dom(page)
    assert 'alt="mixture"' in dom and "Mixture model at 24 examples" in dom and 'class="demo"' in dom
