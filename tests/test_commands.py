"""One command layer: the `medinject` console script declared in pyproject.toml dispatches to every
tool, `python -m medinject` is the same command, and every tool ends by one rule (util.cli.ending)."""

import errno
import importlib
import signal
import tomllib

import pytest
from conftest import ROOT, cli

from medinject.commands import COMMANDS, main
from medinject.util.cli import ending, tool
from medinject.util.errors import Interrupted, UserError


def test_the_console_script_names_a_callable_that_exists():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["medinject"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_every_subcommand_names_a_tool_that_exists():
    assert {"train", "eval", "report", "review", "dashboard", "prepare"} <= set(COMMANDS)
    for name, (module, function, _) in COMMANDS.items():
        assert callable(getattr(importlib.import_module(module), function)), name


def test_python_m_medinject_lists_the_commands_and_refuses_an_unknown_one(capsys):
    result = cli("-m", "medinject", timeout=120)
    assert result.returncode == 0 and all(name in result.stdout for name in COMMANDS)
    assert main(["nope"]) == 2
    assert capsys.readouterr().err.strip() == f"medinject: error: no command 'nope'; the commands: {', '.join(COMMANDS)}"


def test_a_subcommand_runs_its_tool_with_the_rest_of_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["status", str(tmp_path / "nowhere")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == f"medinject: error: {tmp_path / 'nowhere'}: not a directory"


def test_one_rule_for_how_a_command_ends():
    refused = OSError(errno.EROFS, "Read-only file system", "/data/out/results.json")
    assert ending(UserError("x.json: damaged")) == (2, "medinject: error: x.json: damaged")
    assert ending(refused) == (2, "medinject: error: /data/out/results.json: Read-only file system")
    wrapped = ValueError("Unable to configure handler 'file'")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/data/out/train.log")
    assert ending(wrapped) == (2, "medinject: error: /data/out/train.log: No space left on device")
    assert ending(Interrupted(signal.SIGTERM))[0] == 128 + signal.SIGTERM
    assert ending(KeyboardInterrupt(), resumable=True) == (130, "medinject: interrupted (Ctrl-C); results.json says so; rerun the same command to resume")
    assert ending(RuntimeError("a bug")) is None  # a bug keeps its traceback
    assert ending(OSError(errno.EBADF, "Bad file descriptor")) is None


def test_a_tool_ends_with_one_line_and_keeps_a_bug_s_traceback(capsys):
    @tool
    def refuses(argv):
        raise OSError(errno.EACCES, "Permission denied", "/srv/report")

    @tool
    def crashes(argv):
        raise RuntimeError("a bug")

    with pytest.raises(SystemExit) as stopped:
        refuses([])
    assert stopped.value.code == 2 and capsys.readouterr().err == "medinject: error: /srv/report: Permission denied\n"
    with pytest.raises(RuntimeError):
        crashes([])
