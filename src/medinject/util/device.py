"""Where models run: one rule for every stage that places a model itself (re-evaluation, judge)."""

from __future__ import annotations

import torch


def default_device(accelerator: str) -> str:
    """The device a stage uses when no run placed the model: the first GPU when the trainer would
    train on one and CUDA is there, else the CPU."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda:0"
    return "cpu"
