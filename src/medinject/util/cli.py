"""How medinject's command-line entry points end on bad input."""

from __future__ import annotations

import functools
import sys

from medinject.util.errors import UserError


def exit_on_user_error(task):
    """Bad input ends the job with one line on stderr and exit status 2, not a traceback.
    In a multirun the error is left to Hydra, which records the job as failed and runs the others."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except UserError as err:
            if in_multirun():
                raise
            print(f"medinject: error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
