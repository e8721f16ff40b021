"""Shared set-up: offline hub, offline W&B, one tiny model per test session, real configs shrunk."""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub / wandb: these are read once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["MEDINJECT_CACHE"] = tempfile.mkdtemp(prefix="medinject-test-cache-")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import medinject.config  # noqa: E402

medinject.config.register()  # the schema and resolvers, as every entry point registers them before composing

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run long enough to be interrupted between two checkpoints, short enough for CI (test_resume, test_slurm).
RESUMABLE = ("experiment=smoke", "logger=csv", "trainer.enable_progress_bar=false", "trainer.max_steps=16",
             "trainer.checkpoint_every_n_steps=4", "eval.limit=4", "eval.tasks=[mcqu,oeq]")


# Modules whose every test runs something whole: CLI runs and sweeps, the SLURM cluster, Chromium, a vLLM
# engine, lm-eval. With every `slow` test and the tests marked `e2e` in other modules they form the
# end-to-end tier, which `make test-fast` leaves out.
E2E_MODULES = {"test_base_model", "test_cli", "test_gpu", "test_lm_eval", "test_mixture_sweep", "test_read_only", "test_report", "test_resume", "test_search_rounds",
               "test_review", "test_run", "test_slurm", "test_summary", "test_sweep_progress", "test_vllm", "test_vllm_run", "test_wandb"}


# A read-only directory for root, whom chmod does not stop: a read-only bind mount of it in a private
# mount namespace, for the one command run there ($0 is the directory, "$@" the command).
_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def cli(*args: str, read_only: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python ARGS...` run from the repository root as a user runs it (`train.py ...`, `-m medinject ...`);
    with `read_only`, that directory is read-only for the command (the test is skipped, with the reason,
    where this machine cannot make it so)."""
    command = [sys.executable, *args]
    if read_only is not None:
        if (why := read_only_unavailable()) is not None:
            pytest.skip(why)
        command = ["unshare", "-m", "sh", "-c", _READ_ONLY, str(read_only), *command]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@functools.cache
def read_only_unavailable() -> str | None:
    """Why a directory cannot be made read-only here (no unshare, no permission to mount), or None."""
    if shutil.which("unshare") is None:
        return "no unshare on PATH (util-linux): cannot make a directory read-only"
    probe = Path(tempfile.mkdtemp(prefix="medinject-ro-probe-"))
    result = subprocess.run(["unshare", "-m", "sh", "-c", _READ_ONLY, str(probe), "sh", "-c", f"! touch {probe}/x"],
                            capture_output=True, text=True, timeout=60)
    shutil.rmtree(probe, ignore_errors=True)
    return None if result.returncode == 0 else f"a read-only bind mount is not permitted here ({result.stderr.strip() or 'unshare -m failed'})"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in E2E_MODULES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.e2e)


def compose_cfg(*overrides: str, output_dir: Path | str = "/tmp/medinject-unused"):
    """The production config, composed the way train.py does, with overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={output_dir}", *overrides])


# The smoke preset shrunk further: every stage runs, in a few seconds per job.
SMALL_SWEEP = ("experiment=smoke", "logger=none", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "mix.budget=24",
               "eval.limit=4", "eval.oeq_max_new_tokens=16")
SWEEP_SEEDS = (1, 2)


@pytest.fixture(scope="session")
def provenance_sweep(tmp_path_factory) -> Path:
    """One real `python train.py -m experiment=provenance_sweep` per test session, for the tests that
    need a finished one: every config of conf/data (the seven and the base model) x seeds 1 and 2 on
    SMALL_SWEEP, with the report the multirun builds at its end. Tests read it; one that changes it
    works on a copy, and one that builds a report elsewhere passes `--out`."""
    root = tmp_path_factory.mktemp("provenance_sweep")
    result = cli("train.py", "-m", "experiment=[provenance_sweep,smoke]", *SMALL_SWEEP[1:], f"seed={','.join(map(str, SWEEP_SEEDS))}",
                 f"hydra.sweep.dir={root}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture
def smoke_cfg(tmp_path):
    def make(*overrides: str):
        return compose_cfg("experiment=smoke", "logger=csv", "trainer.enable_progress_bar=false", *overrides, output_dir=tmp_path / "run")

    return make


class Chromium:
    """Headless Chromium on a local page, with the flags this closed network needs (no background
    connections) and its own empty profile."""

    def __init__(self, binary: str, profile: Path):
        self.binary = binary
        self.flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]

    def dom(self, page: str) -> str:
        """The page's DOM after Chromium has loaded it."""
        result = subprocess.run([self.binary, *self.flags, "--dump-dom", page], check=False, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def screenshot(self, page: str, shot: Path, width: int, height: int) -> Path:
        result = subprocess.run([self.binary, *self.flags, f"--window-size={width},{height}", f"--screenshot={shot}", page],
                                check=False, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
        return shot


@pytest.fixture
def chromium(tmp_path) -> Chromium:
    """A real browser, or the test skipped with the reason."""
    binary = next((path for name in ("chromium", "chromium-browser", "google-chrome", "chrome") if (path := shutil.which(name))), None)
    if binary is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    return Chromium(binary, tmp_path / "profile")
