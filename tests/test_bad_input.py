"""A hostile user's inputs and faults, through the real CLI: each ends in exit 2 (or the signal's
status) with one line naming the key or the file, nothing half-written left; valid but unusual input
completes with what was cut, skipped or dropped counted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli, compose_cfg
from medinject.config import check_settings
from medinject.util.errors import UserError

SAMPLE = ROOT / "src" / "medinject" / "sample_data"
QUICK = ("experiment=smoke", "logger=none", "trainer.enable_progress_bar=false", "trainer.max_steps=2", "eval.limit=2", "eval.tasks=[mcqu]")


def _one_line(result: subprocess.CompletedProcess, status: int = 2) -> str:
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------ settings

SETTINGS = [
    ("optim.lr=-0.001", "optim.lr: -0.001 is out of range; allowed: a number > 0"),
    ("trainer.batch_size=0", "trainer.batch_size: 0 is out of range; allowed: an integer >= 1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches: 0 is out of range; allowed: an integer >= 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs: 0 trains nothing"),
    ("data.contamination.threshold=2", "data.contamination.threshold: 2.0 is out of range; allowed: a share in (0, 1]"),
    ("eval.limit=0", "eval.limit: 0 is out of range; allowed: null (every item) or an integer >= 1"),
    ("adapter.r=0", "adapter.r: 0 is out of range; allowed: an integer >= 1"),
    ("adapter.dropout=1.5", "adapter.dropout: 1.5 is out of range"),
    ("data.max_length=0", "data.max_length: 0 is out of range"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens: 0 is out of range"),
    ("eval.judge.batch_size=0", "eval.judge.batch_size: 0 is out of range"),
    ("trainer.strategy=fsdp", "trainer.strategy: fsdp is not supported"),
]


@pytest.mark.parametrize("override, message", SETTINGS)
def test_out_of_range_settings_are_refused_naming_the_key(override, message):
    extra = ["trainer.max_steps=-1"] if override.startswith("trainer.max_epochs") else []
    with pytest.raises(UserError) as err:
        check_settings(compose_cfg("experiment=smoke", override, *extra))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("override", ["optim.lr=-0.001", "trainer.max_steps=-1 trainer.max_epochs=0", "eval.limit=0"])
def test_the_cli_refuses_before_loading_anything(tmp_path, override):
    result = cli("train.py", *QUICK, *override.split(), f"hydra.run.dir={tmp_path}/run")
    key = override.split()[-1].split("=")[0]
    assert _one_line(result).startswith(f"medinject: error: {key}: ")
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and record["timing"].get("data") is None  # nothing was loaded
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ input files

def _sample_copy(tmp_path: Path) -> Path:
    data = tmp_path / "sample"
    shutil.copytree(SAMPLE, data)
    return data


@pytest.mark.e2e
@pytest.mark.parametrize("encoding", ["utf-16", "binary"])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, encoding):
    data = _sample_copy(tmp_path)
    bad = data / "native" / "train" / "mcq.jsonl"
    text = bad.read_text(encoding="utf-8")
    bad.write_bytes(text.encode("utf-16") if encoding == "utf-16" else os.urandom(4096))
    result = cli("train.py", *QUICK, f"paths.sample_data={data}", f"hydra.run.dir={tmp_path}/run")
    assert _one_line(result).startswith(f"medinject: error: {bad}: not UTF-8 text")


def test_a_byte_order_mark_is_tolerated_and_a_file_listed_twice_is_read_once(tmp_path):
    data = _sample_copy(tmp_path)
    mcq = data / "native" / "train" / "mcq.jsonl"
    mcq.write_bytes(b"\xef\xbb\xbf" + mcq.read_bytes())
    folder = data / "native" / "train"
    result = cli("-m", "medinject.data.prepare", "experiment=smoke", "logger=none", "mix=natural",
                  f"data.sources.native.files=[{folder},{folder},{mcq}]", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    rows = sum(1 for f in folder.glob("*.jsonl") for line in f.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    assert manifest["sources"]["native"]["rows"] == rows
    assert manifest["sources"]["native"]["duplicates"]["within_source"] == 0  # read once, not read twice and deduplicated


@pytest.mark.parametrize("action", ["drop", "keep", "error"])
def test_a_row_repeated_200_times_is_counted_and_dropped_kept_or_refused(tmp_path, action):
    data = _sample_copy(tmp_path)
    mcq = data / "native" / "train" / "mcq.jsonl"
    lines = mcq.read_text(encoding="utf-8").splitlines()
    mcq.write_text("\n".join(lines + [lines[0]] * 200) + "\n", encoding="utf-8")
    result = cli("-m", "medinject.data.prepare", "experiment=smoke", "logger=none", "mix=natural", f"data.duplicates={action}",
                  f"paths.sample_data={data}", f"hydra.run.dir={tmp_path}/run")
    if action == "error":
        assert _one_line(result) == (f"medinject: error: {mcq}:{len(lines) + 1}: duplicates {mcq}:1 (same type, instruction, "
                                     "context and answer); data.duplicates=drop drops such rows, keep keeps them")
        return
    assert result.returncode == 0, result.stderr[-3000:]
    native = json.loads((tmp_path / "run" / "manifest.json").read_text())["sources"]["native"]
    assert native["duplicates"] == {"within_source": 200, "across_sources": 0, "action": action}
    distinct = sum(1 for f in (data / "native" / "train").glob("*.jsonl") for line in f.read_text(encoding="utf-8").splitlines() if line.strip()) - 200
    assert native["rows"] == distinct + (200 if action == "keep" else 0)


@pytest.mark.e2e
def test_a_test_item_longer_than_the_model_reads_is_left_out_and_counted(tmp_path):
    tests = tmp_path / "native_test"
    shutil.copytree(SAMPLE / "native" / "test", tests)
    rows = (tests / "mcqu.jsonl").read_text(encoding="utf-8").splitlines()
    long = json.loads(rows[0])
    long["instruction"] = "Un patient présente une longue histoire clinique. " * 2000  # ~100k characters
    (tests / "mcqu.jsonl").write_text("\n".join([json.dumps(long, ensure_ascii=False), *rows[1:]]) + "\n", encoding="utf-8")
    result = cli("train.py", *QUICK, "eval.limit=3", f"eval.test_sets.native.files=[{tests}]", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert metrics["eval/native/mcqu/skipped_too_long"] == 1 and metrics["eval/native/mcqu/n"] == 2
    assert metrics["eval/translated/mcqu/skipped_too_long"] == 0 and metrics["eval/translated/mcqu/n"] == 3
    predictions = (tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 5


# ------------------------------------------------------------------------------------------ ends

class _SignalsWhenCollected:
    """Sends this process SIGTERM from its finaliser, as a garbage-collected dataset did in CI."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here, inside __del__, where Python drops what it raises


def test_a_sigterm_whose_exception_a_finaliser_swallowed_still_ends_the_work():
    from medinject.util.errors import Interrupted
    from medinject.util.lock import ending_signals, raise_if_interrupted

    with pytest.raises(Interrupted, match="SIGTERM"):
        with ending_signals():
            _SignalsWhenCollected()  # made and collected at once
            raise_if_interrupted()  # the run's checkpoint
    left = []
    with pytest.raises(Interrupted, match="SIGTERM"):
        with ending_signals():  # no checkpoint: the block itself raises on leaving
            _SignalsWhenCollected()
            left.append("body finished")
    assert left == ["body finished"]
    with ending_signals():  # a new block starts clean
        raise_if_interrupted()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.e2e
def test_sigterm_during_evaluation_leaves_an_interrupted_record_and_a_rerun_completes(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train.py", "experiment=smoke", "logger=none", "trainer.enable_progress_bar=false", "eval.limit=12",
            "eval.oeq_max_new_tokens=256", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "adapter" / "adapter_model.safetensors").exists():  # saved: evaluation starts
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:] if process.poll() is not None else "timeout"
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("medinject: interrupted: SIGTERM received")
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    assert not (run_dir / "predictions.jsonl").exists()
    assert not list(run_dir.glob(".*.tmp"))  # no half-written file

    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"


@pytest.mark.e2e
def test_two_identical_commands_one_trains_the_other_stops_at_once(tmp_path):
    args = [sys.executable, "train.py", *QUICK, "trainer.max_steps=80", f"hydra.run.dir={tmp_path}/run"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / ".lock.owner").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    second = cli(*args[1:])
    assert first.poll() is None  # at once: it neither trained nor waited for the first to finish
    line = _one_line(second)
    assert line.startswith(f"medinject: error: {tmp_path}/run: another run is using this directory (pid {first.pid} on ")
    assert first.wait(timeout=300) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "completed"
    assert not [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if "-v" in p.name]

    waited = cli(*args[1:], "wait_for_lock=true")  # waits, then reports the finished run
    assert waited.returncode == 0 and "already completed; skipped" in waited.stderr + waited.stdout


@pytest.mark.e2e
def test_a_completed_run_whose_adapter_was_deleted_is_not_skipped(tmp_path):
    args = ["train.py", *QUICK, f"hydra.run.dir={tmp_path}/run"]
    assert cli(*args).returncode == 0
    shutil.rmtree(tmp_path / "run" / "adapter")
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stderr + again.stdout
    assert "already completed; skipped" not in output and "adapter/adapter_config.json is missing or damaged" in output
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "completed" and record["train"]["resumed_from_step"] == 2
    assert isinstance(record["metrics"]["train/probe_loss_end"], float)  # measured although no step was left to train


# ------------------------------------------------------------------------------------------ other tools

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = cli("train.py", "experiment=smoke", "logger=none", "trainer.enable_progress_bar=false", "trainer.max_steps=2",
                  "eval.limit=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _damaged_copy(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


@pytest.mark.e2e
def test_evaluate_and_review_export_name_a_truncated_results_file(trained_run, tmp_path):
    run_dir = _damaged_copy(trained_run, tmp_path)
    results = run_dir / "results.json"
    results.write_text(results.read_text()[:100])
    line = _one_line(cli("-m", "medinject.eval", str(run_dir)))
    assert line.startswith(f"medinject: error: {results}: not valid JSON")
    line = _one_line(cli("-m", "medinject.report.review", "export", str(run_dir), "--out", str(tmp_path / "review")))
    assert line.startswith(f"medinject: error: {results}: not valid JSON")
    assert not (tmp_path / "review" / "review.csv").exists()


@pytest.mark.e2e
def test_evaluate_names_truncated_adapter_weights(trained_run, tmp_path):
    run_dir = _damaged_copy(trained_run, tmp_path)
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    line = _one_line(cli("-m", "medinject.eval", str(run_dir)))
    assert line.startswith(f"medinject: error: {run_dir / 'adapter'}: cannot load the adapter")


def test_evaluate_refuses_a_bad_override_or_a_missing_device_before_loading(trained_run, tmp_path):
    run_dir = _damaged_copy(trained_run, tmp_path)
    before = (run_dir / "results.json").read_text()
    line = _one_line(cli("-m", "medinject.eval", str(run_dir), "eval.protocol=bogus"))
    assert line == "medinject: error: eval.protocol: Invalid value 'bogus', expected one of [lenient, strict]"
    n = _cuda_devices()
    line = _one_line(cli("-m", "medinject.eval", str(run_dir), f"eval.device=cuda:{n}"))
    assert line.startswith(f"medinject: error: eval.device: 'cuda:{n}' is not on this machine")
    assert (run_dir / "results.json").read_text() == before


def test_review_import_names_a_bad_judge_value_and_a_broken_csv(trained_run, tmp_path):
    (tmp_path / "key.csv").write_text("uid,judge\nR00001,x\n", encoding="utf-8")
    (tmp_path / "ratings.csv").write_text("uid,rating\nR00001,1\n", encoding="utf-8")
    line = _one_line(cli("-m", "medinject.report.review", "import", str(tmp_path / "ratings.csv")))
    assert line == f"medinject: error: {tmp_path / 'key.csv'}:2: field 'judge': 'x' is not 0, 1 or empty"
    (tmp_path / "key.csv").write_text("uid,judge\nR00001,1\n", encoding="utf-8")
    (tmp_path / "ratings.csv").write_text('uid,rating\nR00001,"1\n', encoding="utf-8")
    line = _one_line(cli("-m", "medinject.report.review", "import", str(tmp_path / "ratings.csv")))
    assert line.startswith(f"medinject: error: {tmp_path / 'ratings.csv'}:") and "not valid CSV" in line


@pytest.mark.parametrize("tool", [("-m", "medinject.report"), ("-m", "medinject.report.dashboard"), ("-m", "medinject.eval")])
def test_every_tool_names_a_missing_directory(tmp_path, tool):
    line = _one_line(cli(*tool, str(tmp_path / "nowhere")))
    assert line.startswith("medinject: error: ") and str(tmp_path / "nowhere") in line


# ------------------------------------------------------------------------------------------ refused before any stage

def _no_stage_ran(run_dir: Path) -> None:
    assert not (run_dir / "manifest.json").exists() and not (run_dir / "checkpoints").exists()
    if (run_dir / "results.json").exists():  # a refusal inside run() says so; a compose error writes nothing
        record = json.loads((run_dir / "results.json").read_text())
        assert record["status"] == "failed" and not set(record["timing"]) & {"data", "model", "train", "eval"}


def _model_folder_with_only_a_config(tmp_path: Path, context: int) -> Path:
    """A model folder holding config.json and no weights: a check that loaded the model would fail."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "max_position_embeddings": context}), encoding="utf-8")
    return folder


def _cuda_devices() -> int:
    from medinject.model.preflight import cuda_device_count

    return cuda_device_count()


REFUSED = [
    # Hydra's compose errors: Hydra's text above, the key on the last line
    (["optim.lrr=1"], "optim.lrr: not a setting; optim has: lr, weight_decay, betas, warmup_ratio"),
    (["optim.lr=abc"], "optim.lr: Value 'abc' of type 'str' could not be converted to Float"),
    (["model=nope"], "model: no option 'nope'; available: qwen3_4b_instruct, tiny, tiny_vllm"),
    (["eval.protocol=bogus"], "eval.protocol: Invalid value 'bogus', expected one of [lenient, strict]"),
    # settings and prerequisites, before the data stage
    (["trainer.precision=banana"], "trainer.precision: 'banana' is not a Lightning precision; allowed: transformer-engine, "
                                   "transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, 64, 32, 16, bf16"),
    (["adapter=qlora", "model.dtype=float33"], "model.dtype: 'float33' is not a torch floating-point dtype; allowed: float32, "
                                               "bfloat16, float16, float64, float, half, double"),
    (["data.max_length=100000"], "data.max_length: 100000 is more than the model reads (model.build_tiny.max_position_embeddings "
                                 "is 2048); allowed: an integer from 8 to 2048"),
    (["trainer.accelerator=gpuu"], "trainer.accelerator: 'gpuu' is not supported; allowed: cpu, gpu, cuda, auto; available: cpu ..."),
    (["model.build_tiny=null", "model.path={tmp}/no-such-model"], "model.path: {tmp}/no-such-model does not exist; allowed: a model "
                                                                  "folder (saved with save_pretrained) or a hub id"),
    (["model.build_tiny=null", "model.path={tmp}"], "model.path: {tmp} is not a model folder (no config.json there)"),
    (["model=qwen3_4b_instruct", "model.path=Someone/not-in-the-cache"], "model.path: 'Someone/not-in-the-cache' is not a local folder, "
                                                                         "and the hub is offline (HF_HUB_OFFLINE=1) with no copy of it in the cache ..."),
]


@pytest.mark.parametrize("overrides, line", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_a_refused_setting_is_one_line_exit_2_before_any_stage(tmp_path, overrides, line):
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    result = cli("train.py", *QUICK, *overrides, f"hydra.run.dir={tmp_path}/run")
    expected = "medinject: error: " + line.replace("{tmp}", str(tmp_path))
    if expected.endswith(" ..."):  # the rest names a machine's own folder
        assert _one_line(result).startswith(expected[:-4])
    else:
        assert _one_line(result) == expected
    _no_stage_ran(tmp_path / "run")


def test_compose_errors_keep_hydras_text_above_the_line(tmp_path):
    result = cli("train.py", "optim.lrr=1", f"hydra.run.dir={tmp_path}/run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Key 'lrr' not in 'OptimConfig'" in lines[:-1] and "full_key: optim.lrr" in result.stderr
    assert "HYDRA_FULL_ERROR" not in result.stderr
    assert not (tmp_path / "run").exists()
    prepare = cli("-m", "medinject.data.prepare", "eval.protocol=bogus", f"hydra.run.dir={tmp_path}/run")  # the other composing tool
    assert _one_line(prepare) == "medinject: error: eval.protocol: Invalid value 'bogus', expected one of [lenient, strict]"
    swept = cli("train.py", "-m", "optim.lrr=1,2", f"hydra.sweep.dir={tmp_path}/sweep")
    assert _one_line(swept) == "medinject: error: optim.lrr: not a setting; optim has: lr, weight_decay, betas, warmup_ratio"


def test_a_task_error_is_still_reported_by_hydra(tmp_path):
    """HYDRA_FULL_ERROR is medinject's only while composing: an error in the task itself gets Hydra's
    own report (its hint last, status 1), and a user's HYDRA_FULL_ERROR=1 its full traceback."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text("x: 1\n", encoding="utf-8")
    (tmp_path / "app.py").write_text(
        "import os, hydra\nfrom medinject.util.cli import exit_on_compose_error, exit_on_user_error\n"
        "@hydra.main(version_base='1.3', config_path='conf', config_name='app')\n@exit_on_user_error\n"
        "def main(cfg):\n    raise RuntimeError(f\"task failed, HYDRA_FULL_ERROR={os.environ.get('HYDRA_FULL_ERROR')}\")\n"
        "exit_on_compose_error(main)\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, "app.py", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "RuntimeError: task failed, HYDRA_FULL_ERROR=None" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."
    result = subprocess.run([sys.executable, "app.py", "y=2", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, capture_output=True, text=True,
                            env={**env, "HYDRA_FULL_ERROR": "1"}, timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigCompositionException" in result.stderr


def test_devices_this_machine_lacks_are_refused_naming_what_it_has(tmp_path):
    n = _cuda_devices()
    available = ", ".join(["cpu", *(f"cuda:{i}" for i in range(n))])
    result = cli("train.py", *QUICK, f"eval.device=cuda:{n}", f"hydra.run.dir={tmp_path}/run")
    line = _one_line(result)
    assert line.startswith(f"medinject: error: eval.device: 'cuda:{n}' is not on this machine, which has ") and line.endswith(f"; available: {available}")
    _no_stage_ran(tmp_path / "run")
    if n == 0:
        result = cli("train.py", *QUICK, "trainer=gpu", f"hydra.run.dir={tmp_path}/gpu")
        assert _one_line(result).startswith("medinject: error: trainer.accelerator: 'gpu' (trainer=gpu, trainer=ddp) needs a CUDA GPU, "
                                            "and this machine has none")
        _no_stage_ran(tmp_path / "gpu")


def test_max_length_is_checked_against_the_models_config_without_loading_it(tmp_path):
    folder = _model_folder_with_only_a_config(tmp_path, context=128)
    result = cli("train.py", *QUICK, "model.build_tiny=null", f"model.path={folder}", "data.max_length=200", f"hydra.run.dir={tmp_path}/run")
    assert _one_line(result) == (f"medinject: error: data.max_length: 200 is more than the model reads (max_position_embeddings in "
                                 f"{folder / 'config.json'} is 128); allowed: an integer from 8 to 128")
    _no_stage_ran(tmp_path / "run")


def test_the_precision_and_dtype_lists_are_lightnings_and_torchs():
    from typing import get_args

    import torch
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from medinject.config import LIGHTNING_PRECISIONS, TORCH_FLOAT_DTYPES

    assert set(LIGHTNING_PRECISIONS) == set(get_args(_PRECISION_INPUT_STR)) | set(get_args(_PRECISION_INPUT_STR_ALIAS))
    assert all(getattr(torch, name).is_floating_point for name in TORCH_FLOAT_DTYPES)


def test_a_refusal_imports_no_heavy_library(tmp_path):
    """What makes a refusal fast (bench/refusal_time.py times it): nothing of torch, Lightning,
    transformers or peft is imported before the settings are checked."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['train.py', 'optim.lr=-1', 'hydra.run.dir={tmp_path}/run']\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))\n")
    result = cli("-c", code)
    assert result.stdout.split() == ["exit", "2", "[]"], result.stderr[-2000:]


def test_the_budget_refusal_names_the_dropped_duplicates(tmp_path):
    data = _sample_copy(tmp_path)
    train = data / "native" / "train"
    first = (train / "mcq.jsonl").read_text(encoding="utf-8").splitlines()[0]
    for f in train.glob("*.jsonl"):
        f.unlink()
    (train / "mcq.jsonl").write_text((first + "\n") * 200, encoding="utf-8")
    result = cli("-m", "medinject.data.prepare", "experiment=smoke", "logger=none", "data=native", f"paths.sample_data={data}",
                  f"hydra.run.dir={tmp_path}/run")
    assert _one_line(result) == ("medinject: error: mix.budget: source 'native' has 1 training rows, 47 short of its equal share of 48, "
                                 "after 199 of its rows were dropped as duplicates (data.duplicates=drop; data.duplicates=keep trains "
                                 "on every copy); lower mix.budget, or mix.strategy=weighted with mix.allow_repeat=true repeats rows")
    assert not (tmp_path / "run" / "manifest.json").exists()


# ------------------------------------------------------------------------------------------ GPU faults in a stage

def out_of_memory_callback():
    """A Lightning callback (given as `+callbacks.oom._target_`) that raises torch's real CUDA
    out-of-memory error from the first training batch, as an allocation on the GPU would."""
    import lightning as L
    import torch

    class OutOfMemory(L.Callback):
        def on_train_batch_start(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    return OutOfMemory()


def _raises(make_error):
    def stage(*args, **kwargs):
        raise make_error()

    return stage


def _gpu_fault_record(cfg, line: str, ran: set[str]) -> None:
    from medinject.run import run

    with pytest.raises(UserError) as err:
        run(cfg)
    assert str(err.value) == line
    record = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"UserError: {line}"
    assert set(record["timing"]) - {"total"} == ran  # the stages before the one that failed


def test_a_distributed_error_in_the_data_stage_names_the_stage_and_settings(smoke_cfg, monkeypatch):
    import torch.distributed

    import medinject.run

    monkeypatch.setattr(medinject.run, "prepare_data", _raises(lambda: torch.distributed.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1, unhandled system error")))
    _gpu_fault_record(smoke_cfg("logger=none"), "stage data: distributed error, DistBackendError (NCCL error in: ProcessGroupNCCL.cpp:1, "
                      "unhandled system error); check that trainer.devices and trainer.num_nodes match the GPUs and tasks the job has, "
                      "and that every node reaches the others (NCCL_DEBUG=INFO says why NCCL failed); trainer=gpu trains on one GPU "
                      "without NCCL", ran=set())


def test_out_of_memory_in_the_model_stage_names_the_stage_and_settings(smoke_cfg, monkeypatch):
    import torch

    import medinject.model.load

    monkeypatch.setattr(medinject.model.load, "load_model", _raises(lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")))
    _gpu_fault_record(smoke_cfg("logger=none"), "stage model: out of GPU memory (CUDA out of memory. Tried to allocate 8.00 GiB); "
                      "the base model does not fit: adapter=qlora or adapter=qdora (4-bit weights), or a GPU with more memory", ran={"data"})


@pytest.mark.slow
def test_out_of_memory_in_training_names_the_stage_and_settings(smoke_cfg):
    cfg = smoke_cfg("logger=none", "trainer.max_steps=2", "+callbacks.oom._target_=test_bad_input.out_of_memory_callback")
    _gpu_fault_record(cfg, "stage train: out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB); lower trainer.batch_size "
                      "(raise trainer.accumulate_grad_batches to keep the examples per step), set trainer.gradient_checkpointing=true, "
                      "or lower data.max_length", ran={"data", "model"})
    assert not (Path(cfg.paths.output_dir) / "adapter").exists()


@pytest.mark.slow
def test_out_of_memory_in_evaluation_names_the_stage_and_settings(smoke_cfg, monkeypatch):
    import torch

    import medinject.eval.runner

    monkeypatch.setattr(medinject.eval.runner, "evaluate_model", _raises(lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")))
    cfg = smoke_cfg("logger=none", "trainer.max_steps=1", "eval.limit=1")
    _gpu_fault_record(cfg, "stage eval: out of GPU memory (CUDA out of memory. Tried to allocate 1.00 GiB); lower eval.batch_size "
                      "(eval.judge.batch_size for the judge); with eval.backend=vllm, lower eval.vllm_gpu_memory_utilization (the vLLM "
                      "memory share), or eval.backend=hf", ran={"data", "model", "train"})


def test_gpus_beyond_what_the_machine_has_are_refused(monkeypatch):
    """The count of GPUs comes from torch where a driver is loaded; the refusals built on it, checked
    here with the count this machine would report if it had two."""
    from medinject.model import preflight

    monkeypatch.setattr(preflight, "cuda_device_count", lambda: 2)
    with pytest.raises(UserError, match=r"^trainer.devices: 4 GPUs asked for, and this machine has 2; available: cpu, cuda:0, cuda:1$"):
        preflight.check_devices(compose_cfg("trainer=ddp", "trainer.devices=4"))
    with pytest.raises(UserError, match=r"^trainer.devices: GPU 2 asked for, and this machine has 2; available: cpu, cuda:0, cuda:1$"):
        preflight.check_devices(compose_cfg("trainer=gpu", "trainer.devices=[0,2]"))
    with pytest.raises(UserError, match=r"^eval.device: 'cuda:2' is not on this machine, which has 2 CUDA GPUs; available: cpu, cuda:0, cuda:1$"):
        preflight.check_devices(compose_cfg("trainer=gpu", "eval.device=cuda:2"))
    preflight.check_devices(compose_cfg("trainer=ddp", "trainer.devices=2", "eval.device=cuda:1", "eval.judge.device=auto"))
