"""The generation backends, one file each, registered here under their `eval.backend` value. Adding
one: a class implementing `medinject.eval.engine.Engine` in its own file, a value in
`config.EvalBackend`, and a line in BACKENDS."""

from __future__ import annotations

from medinject.config import EvalBackend, EvalSettings
from medinject.eval.engine import Engine
from medinject.eval.hf_backend import HfEngine
from medinject.eval.vllm_backend import VllmEngine

BACKENDS: dict[EvalBackend, type[Engine]] = {
    EvalBackend.hf: HfEngine,
    EvalBackend.vllm: VllmEngine,
}
FALLBACK = EvalBackend.hf  # evaluates any run, in process, on the weights it trained


def engine_class(backend: EvalBackend | str) -> type[Engine]:
    return BACKENDS[EvalBackend(backend)]


def generation_backend(cfg: EvalSettings) -> tuple[EvalBackend, str | None]:
    """The backend that really generates, and why it is not the configured one (None when it is)."""
    backend = EvalBackend(cfg.eval.backend)
    reason = engine_class(backend).refusal(cfg)
    return (FALLBACK, reason) if reason else (backend, None)


def in_process_engine(model, tokenizer, cfg: EvalSettings) -> Engine:
    """The fallback's engine over a model in memory (an evaluator given no engine uses it)."""
    return engine_class(FALLBACK).for_run(model, tokenizer, cfg)
