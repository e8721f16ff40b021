"""The strict protocol (`eval.protocol=strict`, formerly `released`): the study's released evaluation,
the one `experiment=paper` runs. This file is where its budgets and token sets are stated.

* Prompt: the item's own turns and nothing else (no system prompt, no task hint).
* New tokens: 1 for a single answer (mcqu), 2 per option for several (mcq: a letter and a separator
  each), OEQ_NEW_TOKENS for an open answer, whatever `eval.*max_new_tokens` say.
* Allowed tokens of a constrained answer: the last token of "X" and of " X" for each option X, the last
  token of each of SEPARATORS, and every end token (`end_token_ids`); the same set at every step, no
  grammar.
* Letters: `letters.parse_letters_released`: anything but option letters and a few separators empties
  the answer; a single-answer item needs exactly one letter.
"""

from __future__ import annotations

from omegaconf import DictConfig

from medinject.config import EvalProtocol, TaskType
from medinject.data.prompts import prompt_text
from medinject.data.rows import Example
from medinject.eval.decoding import AllowedTokens, last_token
from medinject.eval.letters import join_letters, parse_letters_released
from medinject.eval.protocol import Protocol

SEPARATORS = (",", ", ", " ", ",\n")  # allowed as the last token of each
END_MARKS = ("eos", "eot", "im_end")  # special tokens whose text holds one of these end an answer
OEQ_NEW_TOKENS = 512


def end_token_ids(tokenizer) -> list[int]:
    """EOS and every special token whose text holds one of END_MARKS."""
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    ids = {tokenizer.convert_tokens_to_ids(t) for t in special if any(mark in t.lower() for mark in END_MARKS)}
    return sorted(ids | {tokenizer.eos_token_id})


class StrictProtocol(Protocol):
    name = EvalProtocol.strict
    lm_eval_generate = True

    def prompts(self, tokenizer, items: list[Example], prompt: DictConfig) -> list[str]:
        return [prompt_text(tokenizer, item, "", {}) for item in items]

    def new_tokens(self, task: str, n_options: int, settings: DictConfig) -> int:
        if task == TaskType.mcqu.value:
            return 1
        if task == TaskType.mcq.value:
            return 2 * n_options
        return OEQ_NEW_TOKENS

    def allowed_tokens(self, tokenizer, options: list[tuple[str, ...]]) -> AllowedTokens:
        shared = {last_token(tokenizer, s) for s in SEPARATORS} | set(end_token_ids(tokenizer))
        return AllowedTokens([sorted({last_token(tokenizer, text) for x in opts for text in (x, f" {x}")} | shared) for opts in options])

    def read_letters(self, text: str, item: Example) -> str:
        return join_letters(parse_letters_released(text, item.options, single=item.type == TaskType.mcqu.value))
