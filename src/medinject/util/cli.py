"""How medinject's command-line entry points end: one rule (`ending`) for every tool and the Hydra app."""

from __future__ import annotations

import errno
import functools
import os
from dataclasses import fields, is_dataclass
import sys

from medinject.util.errors import Interrupted, UserError
from medinject.util.rundir import RESULTS


def ending(err: BaseException, resumable: bool = False) -> tuple[int, str] | None:
    """How a medinject command ends on `err`: (exit status, the one line for stderr), or None for an
    error that is a bug (its traceback is what a maintainer needs). Bad input and a write the disk
    refuses (no space, quota, read-only, no permission) end with status 2; a signal with 128 + its
    number, as a shell would report it; Ctrl-C with 130. `resumable`: a run, whose record says it was
    interrupted and which the same command resumes."""
    again = f"; {RESULTS} says so; rerun the same command to resume" if resumable else ""
    if isinstance(err, UserError):
        return 2, f"medinject: error: {err}"
    refused = err
    while refused is not None and not isinstance(refused, OSError):  # e.g. logging's ValueError raised from the OSError
        refused = refused.__cause__
    if refused is not None and refused.errno in _DISK_ERRORS:
        return 2, f"medinject: error: {refused.filename or 'a file'}: {refused.strerror}"
    if isinstance(err, Interrupted):
        return 128 + err.signum, f"medinject: interrupted: {err}{again}"
    if isinstance(err, KeyboardInterrupt):
        return 130, f"medinject: interrupted (Ctrl-C){again}"
    return None


def exit_on_user_error(task):
    """A Hydra task that ends as every medinject command ends (`ending`), not with a traceback. In a
    multirun the error is left to Hydra, which records the job as failed and runs the others."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        _task_errors_to_hydra()
        try:
            return task(*args, **kwargs)
        except BaseException as err:
            end = ending(err, resumable=True)
            if end is None or in_multirun():
                raise
            _exit(*end)

    return wrapper


def tool(main):
    """A command-line tool (`main(argv=None)`, argparse) that ends as every medinject command ends
    (`ending`); SIGTERM ends it as Ctrl-C would, with one line. Returns what `main` returns."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None):
        from medinject.util.lock import ending_signals

        try:
            with ending_signals():
                return main(argv)
        except BaseException as err:
            end = ending(err)
            if end is None:
                raise
            _exit(*end)

    return wrapper


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _exit(status: int, line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.exit(status)


def hydra_app(task, config_dir: str, argv: list[str] | None = None) -> None:
    """Run `task(cfg)` as a Hydra app composing `train.yaml` of `config_dir`, on the command line
    `argv` (default: the process's own), ending as every medinject command ends."""
    import hydra

    if argv is not None:  # Hydra reads its command line from sys.argv
        sys.argv = [sys.argv[0], *argv]
    exit_on_compose_error(hydra.main(version_base="1.3", config_path=str(config_dir), config_name="train")(exit_on_user_error(task)))


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# Hydra (1.3) reports a config that does not compose itself: its run_and_report prints the message, then
# the generic HYDRA_FULL_ERROR hint as the last line, and exits 1; its callbacks start only once a
# config composed, so none sees the error. With HYDRA_FULL_ERROR=1, its documented switch, Hydra raises
# the error instead, and `exit_on_compose_error` ends it as every other refusal ends. The task switches
# it back off when it starts (`_task_errors_to_hydra`): what fails in a run is reported as before.
_FULL_ERROR = "HYDRA_FULL_ERROR"
_compose_errors_are_ours = False


def exit_on_compose_error(app) -> None:
    """Call a `@hydra.main` app; a config that does not compose (an unknown key, a wrong type, an
    unknown group option, a bad choice) ends with Hydra's own message, then one line naming the key,
    and exit status 2; what Hydra itself hits before the task starts (a read-only output directory)
    ends as `ending` says. A user who set HYDRA_FULL_ERROR gets Hydra's full traceback, as asked."""
    global _compose_errors_are_ours
    if os.environ.get(_FULL_ERROR):
        app()
        return
    os.environ[_FULL_ERROR] = "1"
    _compose_errors_are_ours = True
    try:
        app()
    except Exception as err:
        if not _compose_errors_are_ours:
            raise
        line = compose_error_line(err)
        if line is not None:
            print(_hydra_text(err), file=sys.stderr)
            _exit(2, f"medinject: error: {line}")
        end = ending(err)  # e.g. Hydra writing the config into a read-only output directory
        if end is None:
            raise
        _exit(*end)
    finally:
        _task_errors_to_hydra()


def _task_errors_to_hydra() -> None:
    global _compose_errors_are_ours
    if _compose_errors_are_ours:
        os.environ.pop(_FULL_ERROR, None)
        _compose_errors_are_ours = False


def compose_error_line(err: BaseException) -> str | None:
    """The one line for an error Hydra raises while composing the config, naming the key or the group
    (None for any other error)."""
    from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        available = ", ".join(err.options) if err.options else "none"
        return f"{group.replace('/', '.')}: no option {option!r}; available: {available}"
    if isinstance(err, OverrideParseException):
        return f"{err.override}: {_first_line(err.message)}"
    if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
        return f"{err.full_key}: {_first_line(err.msg)}"
    if isinstance(err, CompactHydraException):
        cause = err.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None) and is_dataclass(cause.object_type):
            parent = cause.full_key.rpartition(".")[0] or "the config"
            return f"{cause.full_key}: not a setting; {parent} has: {', '.join(f.name for f in fields(cause.object_type))}"
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            return f"{cause.full_key}: {_first_line(cause.msg)}"
        return _first_line(str(err))
    return None


def _hydra_text(err: BaseException) -> str:
    """What Hydra itself prints for the error (its message, and the OmegaConf error behind it)."""
    from omegaconf.errors import OmegaConfBaseException

    text = str(err).rstrip()
    if isinstance(err.__cause__, OmegaConfBaseException):
        text += "\n" + str(err.__cause__).rstrip()
    return text


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "the config does not compose"
