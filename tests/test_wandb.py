"""W&B conventions read back from real offline run directories, and the sweep's dashboard specification."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from conftest import ROOT, cli
from medinject.report.dashboard import build_spec, to_report

CONFIGS = ("native", "synthetic+translated")
BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed chunks


def wandb_records(path: Path):
    """The protobuf records of an offline `run-<id>.wandb` file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("wandb_sweep")
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=smoke", f"data={','.join(CONFIGS)}", "logger=wandb", "logger.wandb.mode=offline",
         "sweep_name=provenance-check", "trainer.max_steps=2", "eval.limit=2", "eval.tasks=[mcqu,oeq]", "eval.oeq_max_new_tokens=8",
         "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_runs_of_one_sweep_share_a_group_with_one_job_type_per_data_config(sweep):
    runs = {}
    for path in sweep.glob("*/wandb/offline-run-*/run-*.wandb"):
        (run,) = [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"][:1]
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        run_dir = path.parents[2]
        assert run.run_id == (run_dir / "wandb_id").read_text().strip()  # the run directory's own W&B run
        runs[run.job_type] = (run, config)
    assert sorted(runs) == sorted(CONFIGS)
    for job_type, (run, config) in runs.items():
        assert run.run_group == "provenance-check"
        assert run.project == "medinject"
        assert {*job_type.split("+"), "mix:equal_budget", "model:tiny-qwen3", "adapter:qlora", "seed:42"} <= set(run.tags)
        assert config["data.name"] == job_type and config["seed"] == 42  # the resolved config, flattened
        assert config["optim.lr"] == pytest.approx(2e-3)


def test_metrics_are_namespaced_and_predictions_are_a_table(sweep):
    (path,) = sweep.glob("native-*/wandb/offline-run-*/run-*.wandb")
    logged = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            logged.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    assert {"train/loss", "train/lr", "eval/native/mcqu/em_constrained", "eval/translated/oeq/bleu"} <= logged.keys()
    # the per-item table: every prediction of predictions.jsonl, one row each
    assert logged["eval/predictions/_type"] == "table-file"
    n_predictions = len((path.parents[2] / "predictions.jsonl").read_text().splitlines())
    assert logged["eval/predictions/nrows"] == n_predictions == 2 * 2 * 2  # test sets x tasks x eval.limit
    table = json.loads((path.parent / "files" / logged["eval/predictions/path"]).read_text())
    assert "prediction_constrained" in table["columns"] and len(table["data"]) == n_predictions
    assert not {k for k in logged if not k.startswith(("train/", "eval/", "_", "epoch", "trainer/"))}


def test_the_dashboard_specification_has_a_panel_per_reported_metric_and_the_sweep_filter(sweep):
    spec = json.loads((sweep / "dashboard.json").read_text())  # written when the multirun ended
    assert spec == build_spec(sweep)
    reported = set()
    for results in sweep.glob("*/results.json"):
        reported |= {k for k in json.loads(results.read_text())["metrics"] if k.startswith("eval/") and not k.endswith(("/n", "/skipped_too_long"))}  # counts, not scores
    bars = [panel["metric"] for panel in spec["panels"] if panel["type"] == "bar"]
    assert set(bars) == reported | {"train/probe_loss_end"} and len(bars) == len(set(bars))
    assert spec["filter"] == "Group == 'provenance-check'" and spec["groupby"] == "job_type"
    assert sorted(spec["configs"]) == sorted(CONFIGS)

    report = to_report(spec, entity="someone")  # the wandb-workspaces objects, built offline
    (grid,) = [block for block in report.blocks if type(block).__name__ == "PanelGrid"]
    assert len(grid.panels) == len(bars) + 1
    assert {type(p).__name__ for p in grid.panels} == {"BarPlot", "RunComparer"}
    assert all(p.groupby == "job_type" for p in grid.panels if type(p).__name__ == "BarPlot")
    (runset,) = grid.runsets
    assert runset.project == "medinject" and runset.groupby == ["job_type"]
    assert "provenance-check" in str(runset.filters)


def test_the_dashboard_cli_writes_the_specification_offline_and_says_how_to_publish(sweep, tmp_path):
    result = cli("-m", "medinject.report.dashboard", str(sweep), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--publish" in result.stdout and "wandb sync" in result.stdout
    empty = cli("-m", "medinject.report.dashboard", str(tmp_path), timeout=120)
    assert empty.returncode == 2 and empty.stderr.startswith("medinject: error:") and len(empty.stderr.strip().splitlines()) == 1
