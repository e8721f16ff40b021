"""How medinject's command-line entry points end on bad input."""

from __future__ import annotations

import errno
import functools
import sys

from medinject.util.errors import Interrupted, UserError


def exit_on_user_error(task):
    """Bad input ends the job with one line on stderr and exit status 2, not a traceback; so does a
    write the disk refuses (no space, read-only, no permission). A signal ends it with one line and
    128 + the signal's number, as a shell would report it. In a multirun the error is left to Hydra,
    which records the job as failed and runs the others."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except UserError as err:
            if in_multirun():
                raise
            _exit(2, f"medinject: error: {err}")
        except OSError as err:
            if in_multirun() or err.errno not in _DISK_ERRORS:
                raise
            _exit(2, f"medinject: error: {err.filename or 'a file'}: {err.strerror}")
        except Interrupted as err:
            if in_multirun():
                raise
            _exit(128 + err.signum, f"medinject: interrupted: {err}; results.json says so; rerun the same command to resume")
        except KeyboardInterrupt:
            if in_multirun():
                raise
            _exit(130, "medinject: interrupted (Ctrl-C); results.json says so; rerun the same command to resume")

    return wrapper


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _exit(status: int, line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.exit(status)


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
