"""The sweeper behind `python train.py -m ...`: every job runs, and the sweep says how each one ended.

Hydra's basic sweeper stops at the first failed job and leaves no record of the others. This one
expands the same overrides the same way, hands every batch to the configured launcher (local,
submitit local or SLURM), and then, whatever happened:

* writes the sweep summary (`rundir.SWEEP_SUMMARY`) in the sweep dir: every job, its overrides, run directory and status
  (`completed`, `skipped` when an earlier completed run was reused, `failed` with the error, or
  `missing` when the job left no result at all, e.g. a node that died);
* builds the comparison report (`medinject.report`) from the runs that completed;
* fails the command (exit status 1, one line on stderr) when any job did not complete.

With `dry_run=true` it launches nothing: `medinject.sweep.plan` prints what each job would do instead.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from medinject.util import rundir
from medinject.util.errors import UserError, one_line
from medinject.util.io import write_json_atomic
from medinject.util.rundir import SWEEP_SUMMARY as SUMMARY

log = logging.getLogger(__name__)


@dataclass
class ProvenanceSweeperConf:
    _target_: str = "hydra_plugins.medinject_sweeper.ProvenanceSweeper"
    max_batch_size: Optional[int] = None  # jobs handed to the launcher at once (None: all)
    params: Optional[dict[str, str]] = None  # parameter -> values, as for Hydra's basic sweeper


class SweeperWithSummary(BasicSweeper):
    # Hydra's plugin scan re-executes basic_sweeper.py, after which BasicSweeper.__init__'s
    # `super(BasicSweeper, self)` names a different class than the one subclassed here; so the
    # attributes it sets are set here instead.
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict[str, str]] = None):
        self.overrides = None
        self.batch_index = 0
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.hydra_context = None
        self.config = None
        self.launcher = None
        self._batch_size, self._gpu_plan = None, None
        self._started: float | None = None  # when this invocation began (time.time())

    def sweep(self, arguments: list[str]) -> Any:
        from medinject.sweep.devices import check_launcher, local_gpu_plan

        self._started = time.time()  # the job list says it: the status reads this invocation's SLURM arrays only
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        try:
            check_launcher(self.config)
            gpu_plan = local_gpu_plan(self.config)
        except UserError as err:
            _exit(2, str(err))
        batch_size = self.max_batch_size
        if gpu_plan is not None:  # no more jobs at once than GPUs for them, each on its own
            batch_size = min(batch_size or gpu_plan.jobs_at_once, gpu_plan.jobs_at_once)
            log.info("local launcher: %d job(s) at a time, %d GPU(s) each", batch_size, gpu_plan.per_job)
        self._batch_size, self._gpu_plan = batch_size, gpu_plan
        self.overrides = self.split_arguments(overrides, batch_size)
        rounds = OmegaConf.select(self.config, "mixture.rounds") or 0
        if OmegaConf.select(self.config, "mixture.initial") is not None:  # the rounds start from the design's first points
            from medinject.sweep.rounds import initial_design

            try:
                self.overrides = initial_design(self.overrides, self.config.mixture.initial, rounds)
            except UserError as err:
                _exit(2, str(err))
        if gpu_plan is not None:
            self.overrides = [self._with_gpus(batch) for batch in self.overrides]
        search = None
        if rounds != 0:  # the sequential mixture search
            from medinject.sweep.rounds import SearchRounds

            try:
                search = SearchRounds(self, [job for batch in self.overrides for job in batch])
            except UserError as err:
                _exit(2, str(err))
        if self.config.dry_run:  # plans only: nothing is written to the sweep dir, nothing launched
            from medinject.sweep.plan import print_plans

            try:
                print_plans([self._job_config(job) for batch in self.overrides for job in batch])
            except UserError as err:
                _exit(2, str(err))
            if search is not None:
                print(search.dry_run_note())
            return []

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / rundir.MULTIRUN_CONFIG)
        _plant(self.config, sweep_dir)

        jobs: list[dict] = []
        returns: list[Sequence[JobReturn]] = []
        watch = self._watch_pending()
        self.launch_batches(sweep_dir, jobs, returns)
        if search is not None:  # the rounds after the design: fit, choose, register, run, score (sweep/rounds.py)
            try:
                search.run(sweep_dir, jobs, returns, lambda entries: write_summary(sweep_dir, entries))
            except UserError as err:
                write_summary(sweep_dir, jobs)
                _exit(2, str(err))
        if watch is not None:
            watch.stop()
        summary = write_summary(sweep_dir, jobs)
        if watch is not None and watch.reason:
            _exit(1, watch.reason)
        baseline = self.config.report.baseline
        _build_report(sweep_dir, baseline if any(job["data"] == baseline for job in jobs) else None)
        bad = [job for job in jobs if job["status"] in ("failed", "missing")]
        if bad:
            names = ", ".join(f"{' '.join(job['overrides'])} ({job['status']})" for job in bad)
            _exit(1, f"{len(bad)} of {summary['n_jobs']} jobs did not complete: {names}; see {sweep_dir / SUMMARY}")
        return returns

    def launch_batches(self, sweep_dir: Path, jobs: list[dict], returns: list) -> None:
        """Hand every batch of `self.overrides` to the launcher; each job's entry is appended to `jobs`
        (numbered on from those already there)."""
        progress = self._watch_progress(sweep_dir, jobs)
        self.batch_index = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            launch_error = None
            try:
                results = self.launcher.launch(batch, initial_job_idx=len(jobs))
            except Exception as err:  # e.g. submitit: a job ended without writing its result
                log.error("the launcher failed: %s", err)
                results, launch_error = [None] * len(batch), err
            returns.append([r for r in results if r is not None])
            ended = [self._job_entry(len(jobs) + i, job, result, launch_error) for i, (job, result) in enumerate(zip(batch, results))]
            progress.launched(ended)
            jobs += ended
        progress.stop()

    def batches(self, jobs: list[list[str]]) -> list[list[list[str]]]:
        """Jobs (override lists) in the launcher's batches, each with its GPUs on the local launcher."""
        size = self._batch_size or max(1, len(jobs))
        return [self._with_gpus(jobs[i : i + size]) for i in range(0, len(jobs), size)]

    def _with_gpus(self, batch):
        plan = self._gpu_plan
        if plan is None:
            return [list(job) for job in batch]
        return [[*job, f"trainer.local_gpus=[{','.join(map(str, plan.gpus(k)))}]"] for k, job in enumerate(batch)]

    def _watch_progress(self, sweep_dir: Path, earlier: Sequence[dict] = ()):
        """Every planned job in the sweep's job list (`rundir.SWEEP_JOBS`, what `python -m
        medinject.sweep.status` reads while the sweep runs; the jobs of earlier batches first), and a
        watch that logs a line each time one of this launch's jobs ends."""
        from medinject.sweep.progress import ProgressWatch, parallel_jobs

        planned = []
        for job in (job for batch in self.overrides for job in batch):
            cfg = self._job_config(job)
            run_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
            planned.append({"num": len(earlier) + len(planned), "overrides": list(job), "run_dir": str(run_dir.resolve()), "data": cfg.data.name, "seed": cfg.seed})
        every = [{k: job[k] for k in ("num", "overrides", "run_dir", "data", "seed")} for job in earlier] + planned
        rundir.write_job_list(sweep_dir, every, self._started)
        batch = max((len(b) for b in self.overrides), default=1)
        progress = ProgressWatch(planned, parallel_jobs(self.config.hydra.get("launcher"), batch))
        progress.start()
        return progress

    def _watch_pending(self):
        """On SLURM: a watch that stops the sweep when the cluster will never start its jobs."""
        launcher = self.config.hydra.launcher
        if "SlurmLauncher" not in str(launcher.get("_target_", "")):
            return None
        from medinject.sweep.pending import NeverStartsWatch

        watch = NeverStartsWatch(Path(str(launcher.submitit_folder)).parent)
        watch.start()
        return watch

    def _job_config(self, overrides: Sequence[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def _job_entry(self, num: int, overrides: Sequence[str], result: JobReturn | None, launch_error: Exception | None) -> dict:
        cfg = self._job_config(overrides)
        run_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        entry = {"num": num, "overrides": list(overrides), "run_dir": str(run_dir.resolve()), "data": cfg.data.name, "seed": cfg.seed}
        if result is not None and result.status == JobStatus.FAILED:
            err = result._return_value
            return {**entry, "status": "failed", "error": one_line(err)}
        if result is not None and result.status == JobStatus.COMPLETED:
            record = result.return_value if isinstance(result.return_value, dict) else {}
            return {**entry, "status": "skipped" if record.get("skipped") else "completed", "error": None}
        # No word from the job itself: what it left on disk is all there is.
        stored = rundir.try_read_results(run_dir) or {}  # nothing readable it left
        if stored.get("status") == "completed":
            return {**entry, "status": "completed", "error": None}
        if stored.get("status") == "failed":
            return {**entry, "status": "failed", "error": stored.get("error")}
        why = one_line(launch_error) if launch_error else f"the job left no {rundir.RESULTS}"
        return {**entry, "status": "missing", "error": why}


def write_summary(sweep_dir: Path, jobs: list[dict]) -> dict:
    counts = {status: sum(job["status"] == status for job in jobs) for status in ("completed", "skipped", "failed", "missing")}
    ok = counts["failed"] == counts["missing"] == 0
    summary = {
        "sweep_dir": str(Path(sweep_dir).resolve()),
        "status": "completed" if ok else "failed",
        "n_jobs": len(jobs),
        "counts": counts,
        "jobs": jobs,
    }
    write_json_atomic(Path(sweep_dir) / SUMMARY, summary)
    log.info("sweep: %s -> %s", ", ".join(f"{n} {s}" for s, n in counts.items() if n), Path(sweep_dir) / SUMMARY)
    return summary


def _build_report(sweep_dir: Path, baseline: str | None) -> None:
    """The report and the W&B dashboard specification are readings of the results; a problem building
    them must not hide the sweep's outcome."""
    from medinject.report.build import build_report
    from medinject.report.dashboard import build_spec

    try:
        log.info("report: %s", build_report(sweep_dir, baseline=baseline))
    except Exception as err:  # noqa: BLE001 - reported, and the runs' own results stay valid
        log.warning("the sweep report could not be built: %s (run `python -m medinject.report %s`)", one_line(err), sweep_dir)
    try:
        write_json_atomic(sweep_dir / rundir.DASHBOARD, build_spec(sweep_dir))
        log.info("W&B dashboard specification: %s (publish: python -m medinject.report.dashboard %s --publish)", sweep_dir / rundir.DASHBOARD, sweep_dir)
    except Exception as err:  # noqa: BLE001
        log.warning("the dashboard specification could not be built: %s", one_line(err))


def _plant(config: DictConfig, sweep_dir: Path) -> None:
    """Known-answer data (a `planted` config): generated once before the jobs start, and its truth
    (`rundir.TRUTH`) copied into the sweep dir, where the report reads it."""
    from medinject.data.planted import ensure_planted

    try:
        folder = ensure_planted(config.get("planted"), config.paths.sample_data)
    except UserError as err:
        _exit(2, str(err))
    if folder is not None:
        shutil.copyfile(folder / rundir.TRUTH, sweep_dir / rundir.TRUTH)


def _exit(status: int, message: str) -> None:
    """End the command with one line, not a traceback: the details are in the sweep summary and the
    jobs' logs. (Hydra would print the traceback of an exception raised here.)"""
    print(f"medinject: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)

