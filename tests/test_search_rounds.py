"""`mixture.rounds` through the real CLI: the issue's command runs the design and two rounds end to end,
registers each round's predictions before it runs and scores them after; killed during round 2 and
run again, it finishes round 2 without choosing or training round 1 again. Bad settings are refused
in one line naming the key."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli

COMMAND = (  # the command, with the logger, progress bars and the other task types left out to save time
    "experiment=mixture_search", "mixture.rounds=2", "mixture.per_round=3", "model=tiny", "trainer.max_steps=4", "eval.limit=4",
    "logger=none", "trainer.enable_progress_bar=false", "eval.tasks=[mcqu]",
)  # fmt: skip


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _mtimes(sweep: Path, round_record: dict) -> dict[str, float]:
    summary = _read(sweep / "sweep_summary.json") if (sweep / "sweep_summary.json").is_file() else {"jobs": []}
    weights = {point["weights"] for point in round_record["points"]}
    dirs = [Path(j["run_dir"]) for j in summary["jobs"] if any(o in weights for o in j["overrides"])]
    return {str(d): (d / "results.json").stat().st_mtime for d in dirs}


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("search") / "sweep"
    process = subprocess.Popen([sys.executable, "train.py", "-m", *COMMAND, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 900
    try:
        while not (sweep / "round2.json").is_file():  # round 2 planned: its jobs start now
            assert process.poll() is None, "the sweep ended before round 2 was planned"
            assert time.time() < deadline, "round 2 was never planned"
            time.sleep(0.5)
        time.sleep(3)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed = {n: (sweep / f"round{n}.json").read_bytes() for n in (1, 2)}
    registered = {n: (sweep / f"predictions_round{n}.json").read_bytes() for n in (1, 2)}
    round1_runs = _mtimes(sweep, json.loads(killed[1]))
    rerun = cli("train.py", "-m", *COMMAND, f"hydra.sweep.dir={sweep}", timeout=900)
    return sweep, killed, registered, round1_runs, rerun


def test_killed_during_round_2_the_rerun_finishes_it_without_redoing_round_1(killed_and_rerun):
    sweep, killed, registered, round1_runs, rerun = killed_and_rerun
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(killed[2])["status"] == "planned"  # the kill came while round 2 ran
    assert (sweep / "round1.json").read_bytes() == killed[1]  # round 1: neither chosen again nor rescored
    for n in (1, 2):  # registrations are never rewritten
        assert (sweep / f"predictions_round{n}.json").read_bytes() == registered[n]
    round1, round2 = _read(sweep / "round1.json"), _read(sweep / "round2.json")
    assert round2["status"] == "finished" and round2["points"] == json.loads(killed[2])["points"]
    assert len(round1_runs) == 3 and _mtimes(sweep, round1) == round1_runs  # round 1's runs were not trained again
    summary = _read(sweep / "sweep_summary.json")
    assert summary["n_jobs"] == 16 and summary["status"] == "completed"
    weights1 = {p["weights"] for p in round1["points"]}
    assert {j["status"] for j in summary["jobs"] if any(o in weights1 for o in j["overrides"])} == {"skipped"}
    assert "mixture search: round 1 on record (finished)" in rerun.stderr and "mixture search: round 2 scored: 3 point(s)" in rerun.stderr


def test_each_round_records_its_points_fit_and_scored_predictions(killed_and_rerun):
    sweep = killed_and_rerun[0]
    design = _read(sweep / "round0.json")
    assert len(design["points"]) == 10 and design["fit"] is None
    seen = {p["weights"] for p in design["points"]}
    for n, runs_before in ((1, 10), (2, 13)):
        record = _read(sweep / f"round{n}.json")
        predictions = _read(sweep / f"predictions_round{n}.json")
        assert record["fit"]["n_runs"] == runs_before and record["fit"]["model"] == "scheffe_quadratic"
        assert predictions["registered_at"] <= record["finished_at"]
        assert len(record["points"]) == 3 and [p["shares"] for p in predictions["points"]] == [p["shares"] for p in record["points"]]
        for point in record["points"]:
            assert point["weights"] not in seen and point["why"]  # a new point each time, and why
            seen.add(point["weights"])
            assert sum(point["counts"].values()) == 100 and abs(sum(point["shares"].values()) - 1) < 1e-9
            low, high = point["interval"]
            assert low <= point["predicted"] <= high
        assert record["score"]["n_points"] == 3 and record["score"]["coverage"] is not None
        assert len(record["observed"]) == 3
    page = (sweep / "report.html").read_text(encoding="utf-8")
    assert "Mixture search: registered predictions per round" in page
    mixture = _read(sweep / "mixture.json")
    assert len(mixture["design"]) == 16  # the report's fit takes every round's points


def test_a_dry_run_plans_the_design_and_says_rounds_follow():
    result = cli("train.py", "-m", "experiment=mixture_search", "mixture.rounds=3", "mixture.per_round=2", "seed=1,2", "dry_run=true", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "then 3 round(s) of the mixture search, 2 point(s) each x 2 run(s) per point" in result.stdout


def test_the_rounds_can_start_from_the_designs_first_points():
    """mixture.initial=7: the simplex-centroid part of experiment=mixture_search's ten points (vertices,
    edge midpoints, centroid), each with both seeds, is what runs before the rounds."""
    result = cli("train.py", "-m", "experiment=mixture_search", "mixture.rounds=2", "mixture.per_round=1", "mixture.initial=7", "seed=1,2",
                 "dry_run=true", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "=== dry run: 14 of 14 jobs planned" in result.stdout and "then 2 round(s) of the mixture search, 1 point(s) each x 2 run(s)" in result.stdout
    from medinject.sweep.rounds import initial_design

    batches = [[["mix.weights={a:1,b:0}", "seed=1"], ["mix.weights={a:1,b:0}", "seed=2"]], [["mix.weights={a:0,b:1}", "seed=1"]],
               [["mix.weights={a:0.5,b:0.5}", "seed=1"]]]  # fmt: skip
    assert initial_design(batches, 2, 1) == batches[:2] and initial_design(batches, None, 1) is batches


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("experiment=mixture_search", "mixture.rounds=1", "mixture.initial=11"), "mixture.initial: 11 is out of range; allowed: 1 to the 10 mix.weights points"),
        (("experiment=mixture_search", "mixture.initial=7"), "mixture.initial=7: it sets the design the rounds start from, so it needs mixture.rounds >= 1"),
        (("experiment=mixture_search", "mixture.rounds=1", "mixture.per_round=0"), "mixture.per_round: 0 is out of range; allowed: an integer >= 1"),
        (("experiment=mixture_search", "mixture.rounds=1", "mixture.step=0.3"), "mixture.step: 0.3 is out of range"),
        (("experiment=smoke", "seed=1,2", "mixture.rounds=1"), "mixture.rounds=1: the rounds choose mix.weights"),
    ],
)
def test_bad_round_settings_are_refused_in_one_line(overrides, message):
    result = cli("train.py", "-m", *overrides, "dry_run=true", timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("medinject: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


@pytest.mark.skipif(not os.environ.get("SLURM_CONF"), reason="no SLURM cluster: run `bash slurm/start.sh` and export the SLURM_CONF it prints")
def test_on_slurm_the_design_and_each_round_are_job_arrays_of_their_own(tmp_path):
    sweep = tmp_path / "sweep"
    design = ("mix.weights={native:1,synthetic:0,translated:0},{native:0,synthetic:1,translated:0},{native:0,synthetic:0,translated:1},"
              "{native:0.5,synthetic:0.5,translated:0},{native:0.3333333,synthetic:0.3333333,translated:0.3333334}")  # fmt: skip
    result = cli("train.py", "-m", "experiment=mixture_search", design, "mixture.rounds=1", "mixture.per_round=2", "model=tiny", "trainer.max_steps=2",
                 "eval.limit=4", "eval.tasks=[mcqu]", "logger=none", "trainer.enable_progress_bar=false", "mix.budget=24",
                 "hydra/launcher=slurm_onenode", f"hydra.sweep.dir={sweep}", timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = _read(sweep / "round1.json")
    assert record["status"] == "finished" and len(record["points"]) == 2
    assert record["fit"]["model"] == "scheffe_linear" and record["fit"]["n_runs"] == 5  # 5 runs: the quadratic's 6 coefficients need more
    summary = _read(sweep / "sweep_summary.json")
    assert summary["counts"]["completed"] == 7 and summary["status"] == "completed"
    tasks = [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]
    arrays = sorted({t.split("_")[0] for t in tasks}, key=int)
    assert len(arrays) == 2 and sorted(t for t in tasks if t.startswith(arrays[1] + "_")) == [f"{arrays[1]}_0", f"{arrays[1]}_1"]


def test_the_bench_records_a_grid_through_the_cli(tmp_path):
    """`bench/mixture_search.py --record` on its first 3 lattice points, trained for 2 steps: the grid file
    has each point's per-seed, per-item scores of the planted metric, and replays."""
    import gzip

    out = tmp_path / "grid.json.gz"
    result = cli("bench/mixture_search.py", "--record", str(out), "--points", "3", "--sweep-dir", str(tmp_path / "sweep"),
                 "trainer.max_steps=2", "eval.limit=6", timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    grid = json.loads(gzip.decompress(out.read_bytes()))
    assert grid["metric"] == "eval/native/mcqu/em_loglik" and grid["seeds"] == [1, 2] and len(grid["items"]) == 6
    assert [p["lattice"] for p in grid["points"]] == [[0, 0, 10], [0, 1, 9], [0, 2, 8]]
    for point in grid["points"]:
        assert sorted(point["scores"]) == ["1", "2"] and all(len(v) == 6 and set(v) <= {0.0, 1.0} for v in point["scores"].values())
    shares = grid["points"][1]["shares"]  # what the run trained on (data.counts), near the lattice's 0 / 0.1 / 0.9
    assert shares["native"] == 0 and abs(shares["synthetic"] - 0.1) < 0.02 and sum(shares.values()) == pytest.approx(1, abs=1e-3)
