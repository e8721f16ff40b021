"""Hydra entry point: `python train.py [overrides]`, `python train.py -m data=native,synthetic ...`.

Composes `conf/train.yaml` and hands the config to `medinject.run.run`, which does the whole run.
"""

import hydra
from omegaconf import DictConfig

from medinject.config import register
from medinject.run import run
from medinject.util.cli import exit_on_compose_error, exit_on_user_error

register()  # the schema and resolvers, before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    exit_on_compose_error(main)
