"""What a run directory and a sweep directory hold: every file name, and the records that have a shape.

This module is the only place these names are spelled. The run (`medinject.run`) and the evaluation
without training write the run directory through it; the report, the review export, the dashboard,
re-evaluation, the sweeper and the status command read it through it. A run directory
(`paths.output_dir`, one job) holds:

* `RESULTS`: the run record (`RunRecord`), written atomically when the run ends, however it ends;
* `PREDICTIONS`: one `Prediction` per evaluated test item;
* `INPUTS`: the content hash of every input file the directory's checkpoints and results come from;
* `CONFIG` (the resolved config), `MANIFEST` and `CONTAMINATION` (what the data stage selected and
  why), `ADAPTER/` (the trained adapter), `CHECKPOINTS/`, `PROBE_LOSS`, the lock and its owner.

A sweep directory holds a run directory per job, `SWEEP_JOBS` (the planned jobs, before any runs),
`SWEEP_SUMMARY` (how each job ended) and what the report writes (`POWER`, `MIXTURE`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from medinject.util.errors import UserError
from medinject.util.io import read_json, read_jsonl_numbered, write_json_atomic, write_jsonl_atomic

# ---- a run directory
RESULTS = "results.json"
PREDICTIONS = "predictions.jsonl"
INPUTS = "inputs.json"
CONFIG = "config.yaml"  # the resolved config the run was given (credentials masked)
HYDRA_CONFIG = Path(".hydra") / "config.yaml"  # Hydra's copy, there before the run writes its own
MANIFEST = "manifest.json"  # what the data stage selected
CONTAMINATION = "contamination.json"  # the data stage's contamination audit
ADAPTER = "adapter"  # the trained adapter's folder
ADAPTER_CONFIG = "adapter_config.json"  # peft's file in an adapter folder
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's weights in an adapter folder
ADAPTER_RUN_CONFIG = "medinject_config.yaml"  # the resolved config, beside the adapter it trained
CHECKPOINTS = "checkpoints"  # Lightning's checkpoints
PROBE_LOSS = "probe_loss_start.json"  # the probe loss before training, kept for a resumed run
WANDB_ID = "wandb_id"  # the id of the directory's one W&B run, reused on resume and requeue
LOCK = ".lock"  # one process runs in a directory at a time (medinject.util.lock)
LOCK_OWNER = ".lock.owner"  # who holds the lock

# ---- a sweep directory
SWEEP_SUMMARY = "sweep_summary.json"  # every job and how it ended, written when the sweep ends
SWEEP_JOBS = "sweep_jobs.json"  # every planned job, written before the sweep launches any
MULTIRUN_CONFIG = "multirun.yaml"  # the sweep's config
TRUTH = "truth.json"  # a known-answer sweep: what was planted (medinject.data.planted)
DASHBOARD = "dashboard.json"  # the W&B dashboard's specification

# ---- what the report writes (into the sweep directory, or its --out)
POWER = "power.json"
MIXTURE = "mixture.json"
EXCHANGE_RATES = "exchange_rates.json"
TRUTH_CHECK = "truth_check.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"

Status = Literal["running", "completed", "failed", "interrupted"]
ENDED: tuple[Status, ...] = ("completed", "failed", "interrupted")  # the statuses a run that ended writes


class DataRecord(TypedDict, total=False):
    """`RunRecord.data`: what the run trained on."""

    config: str  # the data config's name
    sources: list[str]
    mix: dict[str, Any] | None
    seed: int
    n_examples: int
    counts: dict[str, dict[str, int]]  # examples per source, per task type
    contaminated_rows: dict[str, int]
    selected_ids_sha256: str
    tokenized: dict[str, Any]  # tokenization statistics


class RunRecord(TypedDict):
    """`results.json`: how the run ended and what it measured."""

    status: Status
    run_dir: str
    metrics: dict[str, float]  # flat: eval/<test set>/<task>/<metric>, train/...
    data: DataRecord
    model: dict[str, Any]  # name, path, adapter (None: the base model as it is), quantization, parameters
    devices: dict[str, str]  # train / eval -> the device ("cuda:0", "cpu")
    inputs: dict[str, str]  # input file -> SHA-256 of its content (as INPUTS)
    timing: dict[str, float]  # seconds per stage, and total
    error: NotRequired[str]  # failed / interrupted: `Type: first line`
    eval: NotRequired[dict[str, Any]]  # the backend, protocol and judge the eval/ metrics come from
    train: NotRequired[dict[str, Any]]
    reevaluated: NotRequired[dict[str, Any]]  # when and with which overrides it was evaluated again
    skipped: NotRequired[bool]  # returned (never written) for a completed run that was not run again


class Prediction(TypedDict, total=False):
    """One line of `predictions.jsonl`: an evaluated test item. `test_set`, `task` and `id` are always
    there; the rest depends on the task (multiple choice: options, outputs and parsed letters per
    decoding, option probabilities, scores; open answers: output, length, judge verdict)."""

    test_set: str
    task: str
    id: str
    source: str  # file:line of the test item
    question: str
    prompt: str
    reference: str
    output: str
    answer_words: int
    judge: int | None  # None: the judge's answer could not be read


PREDICTION_KEYS = ("test_set", "task", "id")  # what every prediction names


def new_record(run_dir: Path | str) -> RunRecord:
    """The record of a run that has started and not yet ended."""
    return {"status": "running", "run_dir": str(run_dir), "metrics": {}, "data": {}, "model": {}, "devices": {},
            "inputs": {}, "timing": {}}


def write_results(run_dir: Path, record: RunRecord) -> None:
    write_json_atomic(Path(run_dir) / RESULTS, record)


def read_results(run_dir: Path) -> RunRecord:
    """The run record; a missing, damaged or foreign file is one line naming it."""
    path = Path(run_dir) / RESULTS
    record = read_json(path)
    if not isinstance(record, dict) or "status" not in record:
        raise UserError(f"{path}: not a medinject results file (no 'status')")
    return record


def try_read_results(run_dir: Path) -> RunRecord | None:
    """The run record, or None when there is none to read (a run that never got that far, or died
    writing it)."""
    try:
        return read_results(run_dir)
    except UserError:
        return None


def run_dirs(path: Path) -> list[Path]:
    """`path` itself when it is a run directory (it holds a run record), else every run directory below it."""
    path = Path(path)
    if (path / RESULTS).is_file():
        return [path]
    return sorted(found.parent for found in path.rglob(RESULTS))


def write_predictions(run_dir: Path, predictions: list[Prediction]) -> None:
    write_jsonl_atomic(Path(run_dir) / PREDICTIONS, predictions)


def read_predictions(run_dir: Path) -> list[Prediction]:
    """Every prediction of the run; a missing file, a damaged line or one that names no item is one
    line naming the file and the line."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise UserError(f"{path}: missing (a completed run writes one line per evaluated item)")
    rows = read_jsonl_numbered(path)
    for number, row in rows:
        if not isinstance(row, dict) or any(key not in row for key in PREDICTION_KEYS):
            raise UserError(f"{path}:{number}: a prediction needs 'test_set', 'task' and 'id'")
    return [row for _, row in rows]


def write_inputs(run_dir: Path, hashes: dict[str, str]) -> None:
    write_json_atomic(Path(run_dir) / INPUTS, hashes)


def read_inputs(run_dir: Path) -> dict[str, str] | None:
    """The input hashes the directory's results and checkpoints come from; None when it has none
    (a new directory) or they cannot be read."""
    try:
        hashes = read_json(Path(run_dir) / INPUTS)
    except UserError:
        return None
    return hashes if isinstance(hashes, dict) else None


class SweepJob(TypedDict, total=False):
    """One job of `SWEEP_JOBS` (num, overrides, run_dir, data, seed) and of `SWEEP_SUMMARY` (and its
    status: completed | skipped | failed | missing, and error)."""

    num: int
    overrides: list[str]
    run_dir: str
    data: str | None
    seed: int | None
    status: str
    error: str | None


def read_job_list(path: Path) -> list[SweepJob]:
    """The `jobs` of a sweep's job list (`SWEEP_JOBS` or `SWEEP_SUMMARY`), one line naming the file
    when it has none."""
    listed = read_json(path)
    if not isinstance(listed, dict) or not isinstance(listed.get("jobs"), list):
        raise UserError(f"{path}: no 'jobs' list")
    return listed["jobs"]


def write_job_list(sweep_dir: Path, jobs: list[SweepJob], started: float) -> None:
    """The sweep's job list (`SWEEP_JOBS`): every planned job and when this invocation started, written
    atomically before the jobs launch (read back by `read_job_list` and `job_list_started`)."""
    write_json_atomic(sweep_dir / SWEEP_JOBS, {"sweep_dir": str(Path(sweep_dir).resolve()), "started": started, "n_jobs": len(jobs), "jobs": jobs})


def job_list_started(sweep_dir: Path) -> float | None:
    """When the sweep's latest invocation started (`SWEEP_JOBS`' `started`, seconds since the epoch,
    written by the sweeper), or None where the job list is missing, damaged or does not say."""
    try:
        listed = read_json(sweep_dir / SWEEP_JOBS)
    except UserError:
        return None
    started = listed.get("started") if isinstance(listed, dict) else None
    return float(started) if isinstance(started, (int, float)) else None
