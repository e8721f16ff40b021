"""The sweep report on a real tiny sweep: seven data configs and the base model x two seeds trained through the CLI, then
`python -m medinject.report` on it; tables, plots, the HTML page in headless Chromium, failures."""

import csv
import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, SMALL_SWEEP, SWEEP_SEEDS, cli

from medinject.util.errors import UserError
from medinject.report.build import build_report

CONFIGS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
KEPT = ("results.json", "predictions.jsonl", "config.yaml", ".hydra")  # what the report reads


def _train_one(run_dir: Path, data: str, seed: int, *extra: str) -> subprocess.CompletedProcess:
    return cli("train.py", *SMALL_SWEEP, f"data={data}", f"seed={seed}", *extra, f"hydra.run.dir={run_dir}")


@pytest.fixture(scope="module")
def sweep_dir(provenance_sweep) -> Path:
    """Seven configs and the base model x two seeds: the session's real `python train.py -m` sweep,
    which also built the report."""
    root = provenance_sweep
    summary = json.loads((root / "sweep_summary.json").read_text())
    assert summary["counts"]["completed"] == len(CONFIGS) * len(SWEEP_SEEDS)
    assert (root / "report.html").is_file()  # built when the multirun ended
    return root


@pytest.fixture(scope="module")
def report(sweep_dir) -> Path:
    result = cli("-m", "medinject.report", str(sweep_dir), "--baseline", "native")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(sweep_dir / "report.html")
    assert f"report: {2 * len(CONFIGS)} runs of {len(CONFIGS)} configs" in result.stderr  # progress goes through logging
    return sweep_dir


def _copy_sweep(src: Path, dst: Path, names: dict[Path, str] | None = None) -> Path:
    """The files the report reads, into `dst` (run dirs renamed per `names`)."""
    for run_dir in sorted(p.parent for p in src.glob("*/results.json")):
        target = dst / (names or {}).get(run_dir, run_dir.name)
        target.mkdir(parents=True)
        for name in KEPT:
            if (run_dir / name).is_dir():
                shutil.copytree(run_dir / name, target / name)
            elif (run_dir / name).exists():
                shutil.copy2(run_dir / name, target / name)
    return dst


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _md_rows(path: Path, config: str) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(f"| {config} |")]


def _runs_of(sweep_dir: Path, config: str) -> list[dict]:
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    return [r for r in results if r["data"].get("config") == config]


def test_summary_lists_every_config_with_stats_over_both_seeds(report):
    rows = _csv_rows(report / "summary.csv")
    assert sorted({r["config"] for r in rows}) == CONFIGS
    metric = "eval/native/mcq/hamming_constrained"
    for config in CONFIGS:
        row = next(r for r in rows if r["config"] == config and r["metric"] == metric)
        assert row["status"] == "completed" and row["seeds"] == "1 2" and row["n_seeds"] == "2" and row["n_items"] == "4"
        # the per-item mean over seeds and items is the runs' own metric averaged over seeds
        expected = np.mean([r["metrics"][metric] for r in _runs_of(report, config)])
        assert float(row["mean"]) == pytest.approx(expected)
        assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
        if config == "native":
            assert row["diff"] == row["p_value"] == ""
        else:
            assert 0 < float(row["p_value"]) <= 1 and row["matched_seeds"] == "2"
    assert {r["metric"] for r in rows} >= {"eval/translated/oeq/bleu", "eval/native/mcqu/em_constrained", "eval/native/oeq/answer_words_mean"}
    assert not any(r["metric"].endswith(("/n", "/reference_words_mean")) for r in rows)

    summary = report / "summary.md"
    text = summary.read_text(encoding="utf-8")
    n_tables = text.count("\n## ") - 4  # less the Summary, Runs, the mixture model and Plots
    assert "\n## Mixture model at 24 examples (native, synthetic, translated)" in text  # the 7 configs are a simplex design
    assert n_tables == 6  # 2 test sets x 3 tasks
    for config in CONFIGS:
        rows_md = _md_rows(summary, config)
        assert len(rows_md) == 2 + n_tables  # the two runs, then one row per table
        assert all("| completed |" in line for line in rows_md)
    assert "p=" in _md_rows(summary, "synthetic")[-1] and "p=" not in _md_rows(summary, "native")[-1]
    assert "judge score vs answer length: skipped" in text


def test_plots_are_valid_non_blank_pngs(report):
    import matplotlib.image

    expected = {f"bars_{t}_{k}.png" for t in ("native", "translated") for k in ("mcqu", "mcq", "oeq")} | {"heatmap.png", "mixture.png", "forest.png"}
    assert {p.name for p in report.glob("*.png")} == expected  # no judge verdicts: no scatter
    for png in report.glob("*.png"):
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, png
        assert image.std() > 0.01, f"{png} is blank"


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text(encoding="utf-8")
    assert page.count("<img ") == page.count('<img src="data:image/png;base64,') == len(list(report.glob("*.png")))
    for reference in ("http://", "https://", "<link", "<script", "url("):
        assert reference not in page


def test_html_renders_in_headless_chromium(report, tmp_path, chromium):
    page = (report / "report.html").as_uri()
    shot = chromium.screenshot(page, tmp_path / "shot.png", 1400, 2000)
    from PIL import Image

    with Image.open(shot) as image:
        gray = np.asarray(image.convert("L"))
    assert gray.shape == (2000, 1400)
    assert (gray < 128).mean() > 0.005, "the screenshot is blank"  # text, table borders and plots drawn

    dom = chromium.dom(page)
    assert dom.count("<table") == 6 + 8  # the summary's per test set and task, then runs + one per test set and task + the mixture model
    assert dom.count("<img ") == len(list(report.glob("*.png")))
    for config in CONFIGS:
        assert f"<td>{config}</td>" in dom


def test_run_directory_names_do_not_matter(report, tmp_path):
    runs = sorted(p.parent for p in report.glob("*/results.json"))
    shuffled = random.Random(0).sample(range(len(runs)), len(runs))
    renamed = _copy_sweep(report, tmp_path / "renamed", {run: f"r{k}" for run, k in zip(runs, shuffled)})
    build_report(renamed)
    assert (renamed / "summary.csv").read_text() == (report / "summary.csv").read_text()


def test_failed_and_missing_runs_show_in_every_table(report, tmp_path):
    sweep = _copy_sweep(report, tmp_path / "sweep")
    jobs = []
    for run_dir in sorted(p.parent for p in sweep.glob("*/results.json")):
        results = json.loads((run_dir / "results.json").read_text())
        data, seed = results["data"]["config"], results["data"]["seed"]
        job = {
            "num": len(jobs),
            "overrides": [f"data={data}", f"seed={seed}"],
            "run_dir": str(run_dir),
            "status": "completed",
            "error": None,
            "data": data,
            "seed": seed,
        }
        if data == "synthetic+translated":  # both seeds failed
            error = f"RuntimeError: planted failure {seed}"
            (run_dir / "results.json").write_text(json.dumps({"status": "failed", "error": error, "metrics": {}, "data": {}}))
            job.update(status="failed", error=error)
        if data == "native+translated" and seed == 2:  # the job left nothing
            shutil.rmtree(run_dir)
            job.update(status="missing", error="the job left no results.json")
        jobs.append(job)
    # a real failure through the CLI, before any data is read: its config comes from .hydra/config.yaml
    failed_dir = sweep / "failed-run"
    result = _train_one(failed_dir, "synthetic", 3, "trainer.max_steps=0")
    assert result.returncode == 2 and json.loads((failed_dir / "results.json").read_text())["status"] == "failed"
    jobs.append(
        {
            "num": len(jobs),
            "overrides": ["data=synthetic", "seed=3"],
            "run_dir": str(failed_dir),
            "status": "failed",
            "error": "x",
            "data": "synthetic",
            "seed": 3,
        }
    )
    summary = {"sweep_dir": str(sweep), "status": "failed", "n_jobs": len(jobs), "counts": {}, "jobs": jobs}
    (sweep / "sweep_summary.json").write_text(json.dumps(summary))

    build_report(sweep)
    rows = _csv_rows(sweep / "summary.csv")
    both_failed = [r for r in rows if r["config"] == "synthetic+translated"]
    assert len(both_failed) == 1 and both_failed[0]["metric"] == "" and both_failed[0]["mean"] == ""
    assert both_failed[0]["status"] == "failed: RuntimeError: planted failure 1 (seed 1); failed: RuntimeError: planted failure 2 (seed 2)"
    one_missing = {r["status"] for r in rows if r["config"] == "native+translated"}
    assert one_missing == {"completed 1/2; missing (seed 2)"}
    synthetic = {r["status"] for r in rows if r["config"] == "synthetic"}
    assert len(synthetic) == 1 and synthetic.pop().startswith("completed 2/3; failed: UserError: trainer.max_steps: 0 ")
    assert {r["seeds"] for r in rows if r["config"] == "native+translated"} == {"1"}
    assert sorted({r["config"] for r in rows}) == CONFIGS

    md = sweep / "summary.md"
    for config, status in (("synthetic+translated", "failed: RuntimeError"), ("native+translated", "missing (seed 2)"), ("synthetic", "(seed 3)")):
        task_rows = _md_rows(md, config)[-6:]  # after the runs table: one row per test set and task
        assert all(status in line for line in task_rows), (config, task_rows)
    runs_table = md.read_text()
    assert (
        "| native+translated | 2 | missing |" in runs_table and "| synthetic+translated | 1 | failed: RuntimeError: planted failure 1 |" in runs_table
    )
    assert "| synthetic | 3 | failed: UserError: trainer.max_steps" in runs_table
    n_tables = runs_table.count("\n## ") - 3  # runs + one per test set and task, less the Summary, the mixture model and Plots
    page = (sweep / "report.html").read_text()
    assert page.count("planted failure 1") == n_tables and page.count("missing (seed 2)") == n_tables - 1


def test_judge_scores_give_a_length_scatter(report, tmp_path):
    sweep = _copy_sweep(report, tmp_path / "sweep")
    rng = random.Random(1)
    for predictions in sweep.glob("*/predictions.jsonl"):
        records = [json.loads(line) for line in predictions.read_text().splitlines()]
        for record in records:
            if record["task"] == "oeq":
                record["judge"] = rng.choice([0, 1, None])
        predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_report(sweep)
    import matplotlib.image

    assert matplotlib.image.imread(sweep / "judge_vs_length.png").std() > 0.01
    assert "judge score vs answer length: skipped" not in (sweep / "summary.md").read_text()
    assert (sweep / "report.html").read_text().count("<img ") == len(list(sweep.glob("*.png"))) == 10


def test_out_writes_elsewhere_and_leaves_the_sweep_alone(report, tmp_path):
    before = sorted(p.name for p in report.iterdir())
    page = build_report(report, baseline="synthetic", out_dir=tmp_path / "out")
    assert page == tmp_path / "out" / "report.html" and page.is_file()
    assert sorted(p.name for p in report.iterdir()) == before
    rows = _csv_rows(tmp_path / "out" / "summary.csv")
    assert all(r["diff"] == "" for r in rows if r["config"] == "synthetic")
    assert all(r["diff"] != "" for r in rows if r["config"] == "native")


def test_corrupt_results_json_is_a_one_line_error(report, tmp_path):
    sweep = _copy_sweep(report, tmp_path / "sweep")
    bad = sorted(sweep.glob("*/results.json"))[3]
    bad.write_text('{"status": "completed", "metrics": ')
    result = cli("-m", "medinject.report", str(sweep))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"medinject: error: {bad}: not valid JSON (Expecting value at line 1 column 36); the file is damaged"
    assert "Traceback" not in result.stderr
    assert not (sweep / "summary.csv").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda run: (run / "predictions.jsonl").write_text('{"test_set": "native"}\n'),
            "predictions.jsonl:1: a prediction needs 'test_set', 'task' and 'id'",
        ),
        (lambda run: (run / "predictions.jsonl").unlink(), "predictions.jsonl: missing"),
        (lambda run: (run / "results.json").write_text("[]"), "results.json: not a medinject results file"),
    ],
)
def test_other_bad_inputs_name_the_file(report, tmp_path, damage, message):
    sweep = _copy_sweep(report, tmp_path / "sweep")
    run = min(p.parent for p in sweep.glob("*/results.json"))
    damage(run)
    with pytest.raises(UserError, match=message) as err:
        build_report(sweep)
    assert str(run) in str(err.value) and "\n" not in str(err.value)


def test_unknown_baseline_and_empty_dir_are_user_errors(report, tmp_path):
    with pytest.raises(UserError, match=r"--baseline nope: no run of that data config .* \(found: base, native, synthetic, "):
        build_report(report, baseline="nope", out_dir=tmp_path / "out")
    with pytest.raises(UserError, match="no run found"):
        build_report(tempfile.mkdtemp(dir=tmp_path))
    result = cli("-m", "medinject.report", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.strip() == f"medinject: error: {tmp_path / 'nowhere'}: not a directory"
