"""What an evaluation protocol decides (`eval.protocol`): how each item is asked, how many new tokens
its answer may take, which tokens a constrained answer may hold, and how option letters are read out
of the answer. Every generation backend and metric asks the run's protocol these four things and
nothing else about it.

A protocol is one class in `medinject.eval.protocols` (one file each) registered there under its
`EvalProtocol` value; `protocol_for` returns the run's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from omegaconf import DictConfig

from medinject.config import EvalProtocol, TaskType
from medinject.data.rows import Example
from medinject.eval.decoding import AllowedTokens


class Protocol(ABC):
    """One evaluation protocol; stateless, so one instance serves a whole run."""

    name: ClassVar[EvalProtocol]
    # lm-eval's generate_until with the exported tasks' letter reading reproduces this protocol's greedy
    # multiple choice (medinject.eval.lm_eval_tasks writes a generate task for it)
    lm_eval_generate: ClassVar[bool] = False

    @abstractmethod
    def prompts(self, tokenizer, items: list[Example], prompt: DictConfig) -> list[str]:
        """Each item's chat-formatted prompt (for every backend); `prompt`: the run's `prompt` settings."""

    @abstractmethod
    def new_tokens(self, task: str, n_options: int, settings: DictConfig) -> int:
        """New tokens one answer may take; `settings`: the run's `eval` settings."""

    @abstractmethod
    def allowed_tokens(self, tokenizer, options: list[tuple[str, ...]]) -> AllowedTokens:
        """What each item's constrained answer may hold (`options`: each item's option letters)."""

    @abstractmethod
    def read_letters(self, text: str, item: Example) -> str:
        """The prediction ("A, C") this protocol reads in a raw output."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} eval.protocol={self.name.value}>"


def configured_new_tokens(task: str, settings: DictConfig) -> int:
    """The configured limit for a task: `eval.oeq_max_new_tokens` for open answers, else `eval.max_new_tokens`."""
    return settings.oeq_max_new_tokens if task == TaskType.oeq.value else settings.max_new_tokens
