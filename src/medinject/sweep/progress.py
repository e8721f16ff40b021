"""A sweep you can watch: one line on stderr each time a job ends, while the launcher waits.

Hydra's launchers return only when every job of a batch has ended (submitit waits on all of them), so
`ProgressWatch` looks at the jobs' run directories meanwhile (`medinject.sweep.status`): a job has
ended when it wrote a run record saying `completed` or `failed` after the sweep started. When the
launcher returns, the jobs the watch did not see end (a completed run reused as `skipped`, a job that
left nothing) get their line from what the sweeper recorded. Each line gives the completed, failed and
pending counts and an ETA: the mean duration of the jobs that ran in this sweep, times the rounds of
`parallel` jobs still to come (1 at a time with Hydra's basic launcher, the batch at once with the
local one, `array_parallelism` on SLURM).
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

from medinject.sweep.status import FINAL, _duration, job_state


class ProgressWatch(threading.Thread):
    def __init__(self, jobs: list[dict], parallel: int, interval_s: float = 2.0, stream=None):
        super().__init__(daemon=True, name="medinject-sweep-progress")
        self.jobs = {int(job["num"]): job for job in jobs}
        self.parallel = max(1, int(parallel))
        self.interval_s = interval_s
        self.stream = stream
        self.lines: list[str] = []
        self._ended: dict[int, str] = {}  # job num -> completed | failed | skipped | missing
        self._durations: list[float] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        # what each run directory held before the sweep: an old run record is not this sweep's word
        self._before = {num: job_state(num, Path(job["run_dir"])).results_mtime for num, job in self.jobs.items()}

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=self.interval_s + 5)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        for num, job in self.jobs.items():
            if num in self._ended:
                continue
            state = job_state(num, Path(job["run_dir"]))
            fresh = state.results_mtime is not None and state.results_mtime != self._before[num]
            if fresh and state.state in FINAL:
                self._end(num, state.state, state.seconds, state.error)

    def launched(self, entries: list[dict]) -> None:
        """The launcher returned these jobs (the sweeper's entries: num, status, error): a line for
        each that the watch has not seen end."""
        self.poll()
        for entry in entries:
            if int(entry["num"]) not in self._ended:
                state = job_state(int(entry["num"]), Path(entry["run_dir"]))
                ran = state.results_mtime is not None and state.results_mtime != self._before.get(int(entry["num"]))
                self._end(int(entry["num"]), entry["status"], state.seconds if ran else None, entry.get("error"))

    def _end(self, num: int, status: str, seconds: float | None, error: str | None) -> None:
        with self._lock:
            if num in self._ended:
                return
            self._ended[num] = status
            if seconds is not None and status in FINAL:
                self._durations.append(float(seconds))
            line = self._line(num, status, seconds, error)
            self.lines.append(line)
        print(line, file=self.stream or sys.stderr, flush=True)

    def _line(self, num: int, status: str, seconds: float | None, error: str | None) -> str:
        job = self.jobs.get(num, {})
        name = Path(job.get("run_dir", "")).name or f"job {num}"
        completed = sum(s in ("completed", "skipped") for s in self._ended.values())
        failed = sum(s in ("failed", "missing") for s in self._ended.values())
        pending = len(self.jobs) - len(self._ended)
        took = f" in {_duration(seconds)}" if seconds is not None else ""
        why = f" ({error})" if error and status in ("failed", "missing") else ""
        line = (f"sweep progress: job {num} {name} {status}{took}{why}; "
                f"{len(self._ended)}/{len(self.jobs)} ended: {completed} completed, {failed} failed, {pending} pending")
        if pending and self._durations:
            mean = sum(self._durations) / len(self._durations)
            line += (f"; ETA {_duration(mean * math.ceil(pending / self.parallel))}"
                     f" (mean {_duration(mean)} per job, {min(self.parallel, pending)} at a time)")
        elif pending:
            line += "; ETA unknown (no job has run to its end yet)"
        return line


def parallel_jobs(launcher, batch_size: int) -> int:
    """How many jobs the launcher runs at once: SLURM's array_parallelism, the whole batch for the
    submitit local launcher, one for Hydra's basic launcher (in this process, one after the other)."""
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if "SlurmLauncher" in target:
        return int(launcher.get("array_parallelism") or batch_size)
    if "LocalLauncher" in target:
        return batch_size
    return 1
