"""Shared set-up: offline hub, offline W&B, one tiny model per test session, real configs shrunk."""

import os
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

import medinject.config  # noqa: E402,F401  (registers the schema)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A run long enough to be interrupted between two checkpoints, short enough for CI (test_resume, test_slurm).
RESUMABLE = ("experiment=smoke", "logger=csv", "trainer.enable_progress_bar=false", "trainer.max_steps=16",
             "trainer.checkpoint_every_n_steps=4", "eval.limit=4", "eval.tasks=[mcqu,oeq]")


def compose_cfg(*overrides: str, output_dir: Path | str = "/tmp/medinject-unused"):
    """The production config, composed the way train.py does, with overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={output_dir}", *overrides])


@pytest.fixture
def smoke_cfg(tmp_path):
    def make(*overrides: str):
        return compose_cfg("experiment=smoke", "logger=csv", "trainer.enable_progress_bar=false", *overrides, output_dir=tmp_path / "run")

    return make
