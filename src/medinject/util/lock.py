"""One run per directory at a time, and runs that end on a signal say so.

`run_lock` holds an OS file lock (filelock's `flock`-based lock) on `<run dir>/.lock` for the whole
run: the kernel releases it when the holder dies, so a killed run never leaves a stale lock. Who holds
it is written beside it, for the refusal's one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from medinject.util.errors import Interrupted, UserError
from medinject.util.rundir import LOCK, LOCK_OWNER as OWNER



@contextmanager
def run_lock(out_dir: Path, wait: bool = False):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / LOCK), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"{out_dir}: another run is using this directory ({_owner(out_dir)}); "
            "let it finish, or add wait_for_lock=true to wait for it and then reuse its result"
        ) from None
    try:
        (out_dir / OWNER).write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}),
            encoding="utf-8",
        )
        yield
    finally:
        (out_dir / OWNER).unlink(missing_ok=True)
        lock.release()


def _owner(out_dir: Path) -> str:
    try:
        owner = json.loads((out_dir / OWNER).read_text(encoding="utf-8"))
        return f"pid {owner['pid']} on {owner['host']} since {owner['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


_received: int | None = None  # the signal `ending_signals` caught, until its block ends


@contextmanager
def ending_signals():
    """SIGTERM (what `kill`, a scheduler's cancel and SLURM's preemption send) raises `Interrupted`
    in the run, so it ends like any other failure: the run record says `interrupted` and why. A
    handler someone else installed first is left alone: under submitit, SIGTERM is bypassed and
    SIGUSR2 requeues the job, which then resumes from its checkpoint.

    Python runs a signal handler in whatever frame is current, and an exception raised inside a
    finaliser (`__del__`, a weakref callback) is printed and dropped, so the signal is also kept:
    `raise_if_interrupted` raises it again at the run's own checkpoints (each evaluation batch,
    before a run is called completed), and the block raises it on leaving if nothing did."""
    global _received
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL or not _main_thread():
        yield
        return

    def handler(signum, frame):
        global _received
        _received = signum
        raise Interrupted(signum)

    _received = None
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
        raise_if_interrupted()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _received = None


def raise_if_interrupted() -> None:
    """Raise `Interrupted` when `ending_signals` caught a signal that has not ended the work yet."""
    if _received is not None:
        raise Interrupted(_received)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
