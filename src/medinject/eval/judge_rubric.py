"""What the judge is asked and how its verdict is read (`eval.judge.rubric`), apart from how the
question reaches a model (`medinject.eval.judge_transport`).

Two rubrics, each a class registered in RUBRICS under its `JudgeRubric` value:

* `medinject`: a French rubric in one user turn (the text is `eval.judge.medinject_rubric`), the
  configured number of new tokens, the verdict a 0 or 1 at the start of the output.
* `released`: the study's released judge, in our words: an English system prompt, a `Question /
  Candidate_answer / Ground_truth` user turn, 1 new token, the verdict the first match of `\\b[01]\\b`,
  else of `[01]`.

A verdict is 1, 0, or None when the output cannot be read; None is counted, never scored as 0.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from omegaconf import DictConfig

from medinject.config import JudgeRubric

_VERDICT = re.compile(r"^\W*([01])(?!\d)")


def parse_verdict(text: str) -> int | None:
    """1 or 0 when the output starts with it (after spaces or punctuation), else None."""
    match = _VERDICT.match(text.strip())
    return int(match.group(1)) if match else None


RELEASED_SYSTEM_PROMPT = (
    "You are a medical evaluator. Judge whether a candidate answer to a medical question is equivalent "
    "to the ground truth answer. Score 1 if it is equivalent: it covers the essential information the "
    "ground truth expects; different wording, or details added or missing, are fine as long as the "
    "answer would still be acceptable. Score 0 if it is not equivalent. Return only the score, 1 or 0."
)
RELEASED_NEW_TOKENS = 1
_RELEASED_VERDICTS = (re.compile(r"\b[01]\b"), re.compile(r"[01]"))


def released_user_turn(question: str, reference: str, answer: str) -> str:
    return f"Question: {question}\nCandidate_answer: {answer}\nGround_truth: {reference}"


def parse_verdict_released(text: str) -> int | None:
    """The first match of \\b[01]\\b, else of [01], else None (unparsable)."""
    for pattern in _RELEASED_VERDICTS:
        if match := pattern.search(text):
            return int(match.group(0))
    return None


class Rubric(ABC):
    """One rubric: the judge's conversation for an answer, its new tokens, its verdict rule."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg  # the run's eval.judge settings

    @abstractmethod
    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]: ...

    @property
    @abstractmethod
    def max_new_tokens(self) -> int: ...

    @abstractmethod
    def parse(self, output: str) -> int | None: ...


class MedinjectRubric(Rubric):
    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.cfg.medinject_rubric.format(question=question, reference=reference, answer=answer)}]

    @property
    def max_new_tokens(self) -> int:
        return int(self.cfg.max_new_tokens)

    def parse(self, output: str) -> int | None:
        return parse_verdict(output)


class ReleasedRubric(Rubric):
    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": RELEASED_SYSTEM_PROMPT}, {"role": "user", "content": released_user_turn(question, reference, answer)}]

    @property
    def max_new_tokens(self) -> int:
        return RELEASED_NEW_TOKENS

    def parse(self, output: str) -> int | None:
        return parse_verdict_released(output)


RUBRICS: dict[JudgeRubric, type[Rubric]] = {JudgeRubric.medinject: MedinjectRubric, JudgeRubric.released: ReleasedRubric}


def rubric_for(cfg: DictConfig) -> Rubric:
    return RUBRICS[JudgeRubric(cfg.rubric)](cfg)
