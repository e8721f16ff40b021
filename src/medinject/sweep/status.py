"""How far a sweep is, from another terminal: `python -m medinject.sweep.status <sweep dir>`.

Every job of the sweep (from the sweep summary once the sweep ended, else the job list the sweeper
writes before it launches anything, else the run directories found below the sweep dir; file names in
`medinject.util.rundir`) with its state, read from its run directory:

* `completed`, `failed` (with the error) or `interrupted` (with the reason): what the run record says,
  unless a process holds the directory again (a requeued or relaunched job);
* `running`: a process holds the run directory (the lock's owner file, written while a run holds it),
  with its last logged optimizer step and training loss (the CSV logger's `metrics.csv` or the W&B
  offline run file) and its newest checkpoint;
* `unfinished`: the directory was started but holds no result and no live process (a job killed
  before it could write one, e.g. by SIGKILL or a node failure);
* `pending`: nothing in its run directory yet.

Where SLURM's `sacct` (else `squeue`) answers, each job of the sweep's job array also shows SLURM's
state (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, ...). Each batch the sweeper launches is one
array (all jobs, unless `hydra.sweeper.max_batch_size` splits them; a mixture search's design and
each of its rounds): a job is matched to its task by its place across the arrays (`array_tasks`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from medinject.util import rundir
from medinject.util.cli import tool
from medinject.util.errors import UserError
from medinject.util.rundir import RESULTS, SWEEP_JOBS, SWEEP_SUMMARY

FINAL = ("completed", "failed")
_ARRAY_TASK = re.compile(r"^(\d+)_(\d+)$")


@dataclass
class JobState:
    num: int
    name: str  # <data>-s<seed>-<key>, the run directory's name
    data: str | None
    seed: int | None
    run_dir: Path
    state: str  # completed | failed | interrupted | running | unfinished | pending
    error: str | None = None
    seconds: float | None = None  # the run's own time (its record's timing.total)
    step: int | None = None  # last logged optimizer step
    loss: float | None = None  # last logged training loss
    checkpoint: str | None = None  # newest checkpoint file
    slurm: str | None = None  # SLURM's state of its array task, where sacct / squeue answer
    results_mtime: float | None = None


def _results(run_dir: Path) -> tuple[rundir.RunRecord | None, float | None]:
    try:
        return rundir.read_results(run_dir), (run_dir / RESULTS).stat().st_mtime
    except (UserError, OSError):
        return None, None


def _holder_alive(run_dir: Path) -> bool:
    """Whether a live process holds the run directory: its owner file names a pid on this host that
    exists, or a process on another host (which cannot be checked from here, so it is believed)."""
    try:
        owner = json.loads((run_dir / rundir.LOCK_OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid")), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def job_state(num: int, run_dir: Path, data: str | None = None, seed: int | None = None) -> JobState:
    run_dir = Path(run_dir)
    job = JobState(num, run_dir.name, data, seed, run_dir, "pending")
    results, job.results_mtime = _results(run_dir)
    if results is not None:
        job.data = job.data or (results.get("data") or {}).get("config")
        job.seconds = (results.get("timing") or {}).get("total")
    if _holder_alive(run_dir):
        job.state = "running"
    elif results is not None and results.get("status") in ("completed", "failed", "interrupted"):
        job.state = results["status"]
        job.error = results.get("error")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        job.state = "unfinished"
    if job.state in ("running", "unfinished", "interrupted"):
        job.step, job.loss = last_logged_loss(run_dir)
        folder = run_dir / rundir.CHECKPOINTS
        checkpoints = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        job.checkpoint = checkpoints[-1].name if checkpoints else None
    return job


def last_logged_loss(run_dir: Path) -> tuple[int | None, float | None]:
    """(optimizer step, train/loss) of the newest training loss the run's loggers wrote: the CSV
    logger's `csv/metrics.csv` or a W&B offline run file (`wandb/offline-run-*/run-*.wandb`)."""
    found: list[tuple[float, int | None, float | None]] = []  # (file time, step, loss)
    for path in run_dir.glob("csv/**/metrics.csv"):
        step, loss = _csv_loss(path)
        if loss is not None:
            found.append((path.stat().st_mtime, step, loss))
    for path in run_dir.glob("wandb/*run-*/run-*.wandb"):
        step, loss = _wandb_loss(path)
        if loss is not None:
            found.append((path.stat().st_mtime, step, loss))
    if not found:
        return None, None
    _, step, loss = max(found, key=lambda f: f[0])
    return step, loss


def _csv_loss(path: Path) -> tuple[int | None, float | None]:
    step = loss = None
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("train/loss"):
                    loss = float(row["train/loss"])
                    step = int(float(row["step"])) if row.get("step") else None
    except (OSError, ValueError, csv.Error):
        return None, None
    return step, loss


_WANDB_BLOCK = 32 * 1024  # a W&B run file is a LevelDB-style log: 32 KiB blocks of chunks, 7-byte headers


def _wandb_loss(path: Path) -> tuple[int | None, float | None]:
    """The last history record holding `train/loss` in a W&B run file (read as far as it was written:
    a running job's file ends mid-record, which is left out)."""
    from wandb.proto import wandb_internal_pb2

    try:
        data = path.read_bytes()
    except OSError:
        return None, None
    if data[:4] != b":W&B":
        return None, None
    step = loss = None
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _WANDB_BLOCK - pos % _WANDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _WANDB_BLOCK - pos % _WANDB_BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first; middle / last
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(pending)
        except Exception:  # noqa: BLE001 - a damaged record: skip it
            continue
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        if "train/loss" in items:
            try:
                loss = float(json.loads(items["train/loss"]))
                raw = items.get("trainer/global_step") or items.get("_step")
                step = int(float(json.loads(raw))) if raw is not None else None
            except ValueError:
                continue
    return step, loss


def sweep_jobs(sweep_dir: Path) -> list[dict]:
    """The sweep's jobs: {num, run_dir, data, seed} each."""
    for name in (SWEEP_SUMMARY, SWEEP_JOBS):
        path = sweep_dir / name
        if path.is_file():
            return [{**job, "run_dir": _moved(sweep_dir, job.get("run_dir") or "")} for job in rundir.read_job_list(path)]
    found = sorted({p.parent for p in sweep_dir.glob(f"*/{RESULTS}")} | {p.parent for p in sweep_dir.glob("*/.hydra")})
    if not found:
        raise UserError(f"{sweep_dir}: no sweep here (no {SWEEP_SUMMARY}, no {SWEEP_JOBS} and no run directory below it)")
    return [{"num": n, "run_dir": str(run_dir), "data": None, "seed": None} for n, run_dir in enumerate(found)]


def _moved(sweep_dir: Path, recorded: str) -> str:
    """A run dir as recorded; when the sweep was moved, the same name under the sweep dir."""
    path = Path(recorded)
    return str(path if path.is_dir() or not path.name or not (sweep_dir / path.name).is_dir() else sweep_dir / path.name)


def array_tasks(sweep_dir: Path, since: float | None = None) -> dict[int, str]:
    """{job number: SLURM task id `<array>_<index>`} of the sweep's job arrays (submitit's
    `.submitit/<array>_<index>` folders, one per task from submission on). The sweeper launches its
    batches (the design's, then each round's) in job-number order and SLURM numbers arrays in
    submission order, so the k-th array's tasks follow those of the arrays before it. `since` (when
    this invocation of the sweep started) leaves out the arrays of earlier invocations."""
    folders = sweep_dir / ".submitit"
    arrays: dict[int, set[int]] = {}
    if folders.is_dir():
        for path in folders.iterdir():
            if (match := _ARRAY_TASK.match(path.name)) and (since is None or path.stat().st_mtime >= since):
                arrays.setdefault(int(match[1]), set()).add(int(match[2]))
    tasks: dict[int, str] = {}
    offset = 0
    for array in sorted(arrays):
        for index in sorted(arrays[array]):
            tasks[offset + index] = f"{array}_{index}"
        offset += max(arrays[array]) + 1
    return tasks


def slurm_states(sweep_dir: Path, since: float | None = None) -> dict[int, str]:
    """{job number: SLURM state} of the sweep's array tasks (`array_tasks`), from sacct, else squeue;
    {} where neither is installed or answers."""
    by_num = array_tasks(sweep_dir, since)
    if not by_num:
        return {}
    tasks = {name: num for num, name in by_num.items()}
    arrays = sorted({name.split("_")[0] for name in tasks}, key=int)
    states: dict[str, str] = {}
    try:
        if shutil.which("sacct"):
            out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(arrays), "-o", "JobID,State"],
                                 capture_output=True, text=True, timeout=30).stdout
            for line in out.splitlines():
                job, _, state = line.partition("|")
                states[job.strip()] = state.split()[0] if state.strip() else ""
        if not states and shutil.which("squeue"):
            out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T"], capture_output=True, text=True, timeout=30).stdout
            for line in out.splitlines():
                job, _, state = line.partition("|")
                states[job.strip()] = state.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {num: states[name] for name, num in tasks.items() if states.get(name)}


def sweep_status(sweep_dir: Path) -> list[JobState]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a directory")
    jobs = [job_state(int(job.get("num", n)), Path(job["run_dir"]), job.get("data"), job.get("seed"))
            for n, job in enumerate(sweep_jobs(sweep_dir))]
    slurm = slurm_states(sweep_dir, rundir.job_list_started(sweep_dir))
    for job in jobs:
        job.slurm = slurm.get(job.num)
    return jobs


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def describe(job: JobState) -> str:
    """One line: the job, its state and what there is to say about it."""
    parts = [f"job {job.num}", job.name, job.state]
    if job.slurm:
        parts.append(f"SLURM {job.slurm}")
    if job.state in FINAL and job.seconds is not None:
        parts.append(f"in {_duration(job.seconds)}")
    if job.step is not None or job.loss is not None:
        parts.append(f"last logged step {job.step if job.step is not None else '?'}, loss {job.loss:.4f}" if job.loss is not None
                     else f"last logged step {job.step}")
    if job.checkpoint:
        parts.append(f"checkpoint {job.checkpoint}")
    if job.error and job.state != "completed":
        parts.append(job.error)
    return "  ".join(parts[:3]) + ("  " + "; ".join(parts[3:]) if parts[3:] else "")


def format_status(sweep_dir: Path, jobs: list[JobState]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    order = ("completed", "failed", "interrupted", "running", "unfinished", "pending")
    head = f"{sweep_dir}: {len(jobs)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
    return "\n".join([head, *(describe(job) for job in jobs)])


@tool
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medinject.sweep.status", description="Every job of a sweep and its state.")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    print(format_status(args.sweep_dir, sweep_status(args.sweep_dir)))


if __name__ == "__main__":
    main()
