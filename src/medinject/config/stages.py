"""The part of the run's config each stage reads, as one typed value per stage: `run._execute` hands
each stage its own (`DataSettings.of(cfg)`, `TrainSettings.of(cfg)`, `EvalSettings.of(cfg)`; the
model stage takes `model`, `adapter` and `trainer` as they are), so a stage cannot read a
setting it does not name here. Each field is the schema's node itself (a `DictConfig` typed by its
schema class), not a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from medinject.config.schema import (
    AdapterConfig,
    DataConfig,
    EvalConfig,
    MixConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    PlantedConfig,
    PromptConfig,
    SourceConfig,
    TrackingConfig,
    TrainerConfig,
)


@dataclass(frozen=True)
class DataSettings:
    """What the data stage reads: the training data and its mix, the test sets it decontaminates
    against and returns, where files are, the seed of the mix, and known-answer parameters."""

    data: DataConfig
    mix: MixConfig
    test_sets: dict[str, SourceConfig]  # eval.test_sets
    paths: PathsConfig
    seed: int
    planted: Optional[PlantedConfig] = None

    @classmethod
    def of(cls, cfg: DictConfig) -> DataSettings:
        return cls(cfg.data, cfg.mix, cfg.eval.test_sets, cfg.paths, int(cfg.seed), cfg.get("planted"))


@dataclass(frozen=True)
class EvalSettings:
    """What the evaluation stage reads: its own settings, the prompt (the lenient protocol's system
    prompt and hints), where files are (cache, WordNet), and the model and adapter (a backend that
    serves the model itself, vLLM, loads them again)."""

    eval: EvalConfig
    prompt: PromptConfig
    paths: PathsConfig
    model: ModelConfig
    adapter: AdapterConfig

    @classmethod
    def of(cls, cfg: DictConfig) -> EvalSettings:
        return cls(cfg.eval, cfg.prompt, cfg.paths, cfg.model, cfg.adapter)


@dataclass(frozen=True)
class TrainSettings:
    """What the training stage reads: the trainer, optimizer and callbacks; how examples become
    tokens and batches (`data`, `prompt`, the seed, the token cache under `paths`); and for the
    loggers it starts, what names and tags a tracked run (`logger`, `tracking`, `sweep_name`, and the
    data, mix, model and adapter it is labelled by)."""

    trainer: TrainerConfig
    optim: OptimConfig
    callbacks: dict[str, Any]
    data: DataConfig
    prompt: PromptConfig
    paths: PathsConfig
    seed: int
    logger: dict[str, Any]
    tracking: TrackingConfig
    sweep_name: str
    mix: MixConfig
    model: ModelConfig
    adapter: AdapterConfig

    @classmethod
    def of(cls, cfg: DictConfig) -> TrainSettings:
        return cls(cfg.trainer, cfg.optim, cfg.callbacks, cfg.data, cfg.prompt, cfg.paths, int(cfg.seed), cfg.logger, cfg.tracking,
                   str(cfg.sweep_name), cfg.mix, cfg.model, cfg.adapter)
