"""The generation-engine interface every evaluation backend implements (`eval.backend`).

An engine answers prompts greedily, each prompt with its own limit of new tokens (`per_prompt` turns
one limit for all into a limit per prompt; it is the only place that does), and decodes multiple
choice twice from the same prompts: greedy, and under a protocol's `AllowedTokens`. Prompts, limits
and allowed tokens come from the run's protocol (`medinject.eval.protocol`), so two engines given the
same inputs answer the same way (tests/test_vllm.py compares them).

A backend is one class in its own file (transformers: `hf_backend`, vLLM: `vllm_backend`), registered
in `medinject.eval.backends` under its `EvalBackend` value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from medinject.config import EvalSettings


def per_prompt(limit: int | Sequence[int], n: int) -> list[int]:
    """One limit of new tokens per prompt, from one for all or one per prompt."""
    return list(limit) if isinstance(limit, (list, tuple)) else [int(limit)] * n


class Engine(ABC):
    """Greedy answers for one run's model. A context manager: what it holds (an engine process, a
    temporary copy of the model) goes when it closes."""

    @classmethod
    def refusal(cls, cfg: EvalSettings) -> str | None:
        """Why this backend cannot evaluate the run `cfg` describes (the fallback backend of
        `medinject.eval.backends` then does, and the run says so in one line), or None."""
        return None

    @classmethod
    def check(cls, cfg: EvalSettings) -> None:
        """Before training: refuse, in one line naming the key, what would stop this backend later."""

    @classmethod
    @abstractmethod
    def for_run(cls, model, tokenizer, cfg: EvalSettings) -> Engine:
        """The engine over a run's model as it is in memory (trained adapter included)."""

    @abstractmethod
    def generate(self, prompts: list[str], max_new_tokens: int | list[int], desc: str = "") -> list[str]:
        """Greedy decoding of each prompt (at most its own number of new tokens), in the order of `prompts`."""

    @abstractmethod
    def decode_choices(self, prompts: list[str], max_new_tokens: int | list[int], constraint, letters: list[list[int]],
                       desc: str = "") -> tuple[list[str], list[str], list[dict[int, float]]]:
        """(greedy texts, constrained texts, first-step scores of each prompt's `letters` as {token id:
        score}) where `constraint` is an `AllowedTokens`; the softmax of a prompt's scores over its
        letters is the probability of each option at the first answer step (raw logits and
        log-probabilities give the same one)."""

    def close(self) -> None:
        """Give back what the engine holds."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
