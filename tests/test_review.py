"""Re-evaluation of a trained run, and the blinded human-review round trip."""

import csv
import json
import subprocess
import sys
import threading
from http.server import HTTPServer

import pytest

from conftest import ROOT, cli, compose_cfg
from test_eval import FakeOpenAI


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    from medinject.run import run

    out = tmp_path_factory.mktemp("judged") / "run"
    server = HTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeOpenAI.seen = []
    try:
        cfg = compose_cfg(
            "experiment=smoke", "logger=csv", "trainer.enable_progress_bar=false", "trainer.max_steps=2", "eval.limit=3",
            "eval.judge.backend=openai", "eval.judge.model=fake", f"eval.judge.base_url=http://127.0.0.1:{server.server_port}/v1",
            output_dir=out,
        )
        run(cfg)
    finally:
        server.shutdown()
    return out


def test_review_export_is_blinded_and_import_gives_the_hand_computed_kappa(judged_run, tmp_path):
    from medinject.report.review import main

    main(["export", str(judged_run.parent), "--out", str(tmp_path), "--per-run", "10", "--seed", "1"])
    review = list(csv.DictReader((tmp_path / "review.csv").open(encoding="utf-8")))
    key = {row["uid"]: row for row in csv.DictReader((tmp_path / "key.csv").open(encoding="utf-8"))}
    assert len(review) == 6 and set(review[0]) == {"uid", "question", "reference", "answer", "rating"}
    assert all(str(judged_run) not in json.dumps(row, ensure_ascii=False) for row in review)  # nothing names the run
    assert sorted(k["judge"] for k in key.values()) == ["", "", "0", "0", "1", "1"]

    # human ratings: agree with the judge except on one item the judge scored 0; unjudged items rated 1
    flipped = False
    for row in review:
        verdict = key[row["uid"]]["judge"]
        if verdict == "0" and not flipped:
            row["rating"], flipped = "1", True
        else:
            row["rating"] = verdict or "1"
    with (tmp_path / "ratings.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(review[0]))
        writer.writeheader()
        writer.writerows(review)
    # judged pairs (human, judge): (1,1) (1,1) (1,0) (0,0): p_o = 3/4, p_e = 3/4*1/2 + 1/4*1/2 = 1/2
    main(["import", str(tmp_path / "ratings.csv")])
    report = json.loads((tmp_path / "agreement.json").read_text())
    assert report["rated"] == 6
    assert report["judge"]["n"] == 4
    assert report["judge"]["accuracy"] == pytest.approx(0.75)
    assert report["judge"]["cohen_kappa"] == pytest.approx(0.5)
    assert set(report["spearman_with_human"]) >= {"rougeL", "bleu", "answer_words"}


def test_bad_rating_is_one_line_error(judged_run, tmp_path):
    from medinject.report.review import import_ratings, main
    from medinject.util.errors import UserError

    main(["export", str(judged_run), "--out", str(tmp_path)])
    (tmp_path / "ratings.csv").write_text("uid,rating\nR00001,peut-être\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"ratings.csv:2: field 'rating': 'peut-être' is not 0 or 1"):
        import_ratings(tmp_path / "ratings.csv", tmp_path / "key.csv")


def test_reevaluation_replaces_eval_metrics_and_keeps_training_ones(judged_run):
    before = json.loads((judged_run / "results.json").read_text())
    assert "eval/native/oeq/judge" in before["metrics"]
    result = subprocess.run(
        [sys.executable, "-m", "medinject.eval", str(judged_run), "eval.judge.backend=none", "eval.constrained=false", "eval.limit=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((judged_run / "results.json").read_text())
    assert after["status"] == "completed" and after["reevaluated"]["overrides"][0] == "eval.judge.backend=none"
    assert "eval/native/oeq/judge" not in after["metrics"] and "eval/native/mcq/em_constrained" not in after["metrics"]
    assert after["metrics"]["eval/native/mcqu/n"] == 2
    for name in ("train/probe_loss_start", "train/probe_loss_end", "train/optimizer_steps"):
        assert after["metrics"][name] == before["metrics"][name]
    lines = (judged_run / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3 * 2


def test_reevaluating_a_directory_that_is_not_a_run_fails_in_one_line(tmp_path):
    result = cli("-m", "medinject.eval", str(tmp_path), timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"medinject: error: {tmp_path}: not a trained run directory (results.json missing)"
