"""Hydra entry point: `python train.py [overrides]`, `python train.py -m data=native,synthetic ...`.

Composes `conf/train.yaml` (the one beside this file) and hands the config to `medinject.run.run`,
which does the whole run: the same app as `medinject train` (medinject.commands).
"""

from pathlib import Path

from medinject.commands import train

if __name__ == "__main__":
    train(config_dir=Path(__file__).resolve().parent / "conf")
