"""The report leads with its answer: per test set, the configurations ranked on each task's main metric
with their difference from the baseline (CI, Holm p) and a forest plot, before the full tables; on run
directories with planted per-item scores, and the page in headless Chromium."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from medinject.report.build import build_report

N_ITEMS = 60
# planted truth: native answers far more items than the base model, translated far fewer, synthetic
# exactly as many (the same items): better, worse, not separable
ACCURACY = {"base": 0.4, "native": 0.95, "synthetic": 0.4, "translated": 0.0}


def _write_run(run_dir: Path, config: str, seed: int) -> None:
    rng = random.Random(f"{config}-{seed}" if config != "synthetic" else f"base-{seed}")
    n_right = round(ACCURACY[config] * N_ITEMS)
    right = set(rng.sample(range(N_ITEMS), n_right))
    hamming = [1.0 if i in right else 0.5 for i in range(N_ITEMS)]
    lines = [{"test_set": "native", "task": "mcqu", "id": f"q{i}", "em_constrained": float(i in right)} for i in range(N_ITEMS)]
    lines += [{"test_set": "native", "task": "mcq", "id": f"m{i}", "hamming_constrained": hamming[i]} for i in range(N_ITEMS)]
    run_dir.mkdir(parents=True)
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = {"eval/native/mcqu/em_constrained": n_right / N_ITEMS, "eval/native/mcqu/n": float(N_ITEMS),
               "eval/native/mcq/hamming_constrained": float(np.mean(hamming)), "eval/native/mcq/n": float(N_ITEMS)}
    record = {"status": "completed", "data": {"config": config, "seed": seed, "counts": {}}, "metrics": metrics, "eval": {"protocol": "medinject"}}
    (run_dir / "results.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    for config in ACCURACY:
        for seed in (1, 2):
            _write_run(root / f"{config}-s{seed}", config, seed)
    build_report(root, baseline="base", n_resamples=400)
    return root


def test_the_summary_ranks_the_configs_and_calls_only_real_differences(planted):
    text = (planted / "summary.md").read_text(encoding="utf-8")
    summary, full = text.split("\n## Runs", 1)  # the summary comes before the first full table
    assert "## Summary" in summary and "### Test set native" in summary
    rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| ") and "rank" not in line]
    mcqu = [r for r in rows][:4]
    assert [r[1] for r in mcqu] == ["native", "base", "synthetic", "translated"] or [r[1] for r in mcqu] == ["native", "synthetic", "base", "translated"]
    verdicts = {r[1]: r[5].rstrip(" |") for r in mcqu}
    assert verdicts == {"native": "better", "base": "baseline", "synthetic": "not separable", "translated": "worse"}
    assert [r[0].lstrip("| ") for r in mcqu] == ["1", "2", "2", "4"]  # base and synthetic score the same: one rank
    assert mcqu[0][3].startswith("+0.550 [")  # 0.95 - 0.40
    assert "better than base: native (+0.550, Holm p" in summary and "worse than base: translated (-0.400" in summary
    assert "**mcq** (hamming_constrained)" in summary  # each task's main metric
    assert "![forest](forest.png)" in summary and (planted / "forest.png").is_file()
    assert "\n## native / mcqu" in full  # the full tables follow as before


def test_without_a_difference_the_summary_says_so(tmp_path):
    for seed in (1, 2):
        _write_run(tmp_path / f"base-s{seed}", "base", seed)
        _write_run(tmp_path / f"synthetic-s{seed}", "synthetic", seed)
    build_report(tmp_path, baseline="base", n_resamples=200)
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8").split("\n## Runs")[0]
    assert summary.count("no configuration differs from base at Holm p < 0.05") == 2  # mcqu and mcq
    assert "| better |" not in summary and "better than" not in summary


def test_chromium_shows_the_summary_before_the_first_full_table(planted, tmp_path, chromium):
    page = (planted / "report.html").as_uri()
    html = chromium.dom(page)
    assert 0 < html.index('<section id="summary">') < html.index("<h2>Runs</h2>") < html.index("<h2>native / mcqu</h2>")
    shot = chromium.screenshot(page, tmp_path / "top.png", 1200, 800)  # the first screen of the page, as a reader opens it
    shutil.copy(shot, planted / "screenshot_top.png")  # kept beside the report, to look at
    from PIL import Image

    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    green = (np.abs(pixels - [0xE6, 0xF4, 0xEA]).sum(axis=1) <= 6).mean()  # the 'better' row of the summary
    red = (np.abs(pixels - [0xFD, 0xEC, 0xEA]).sum(axis=1) <= 6).mean()  # its 'worse' row
    assert green > 0.002 and red > 0.002, "the summary's ranked rows are not on the first screen"
