"""The lenient protocol (`eval.protocol=lenient`, formerly `medinject`): this project's evaluation.

* Prompt: the item's own turns, the configured system prompt (`prompt.system`, unless the item has its
  own) and the task's hint (`prompt.task_hints`) at the end of the last user turn.
* New tokens: the configured ones (`eval.max_new_tokens`, `eval.oeq_max_new_tokens`).
* Allowed tokens of a constrained answer: the option letters that are one token, the single-token
  separators of SEPARATORS and EOS, with a small grammar that keeps the answer readable: the first
  step allows only letters (an answer is never empty), and a letter is followed by a separator or the
  end, never by another letter.
* Letters: `letters.parse_letters`, lenient with what a model writes around its letters.
"""

from __future__ import annotations

from omegaconf import DictConfig

from medinject.config import EvalProtocol
from medinject.data.prompts import prompt_text
from medinject.data.rows import Example
from medinject.eval.decoding import AllowedTokens, option_token_ids, single_token
from medinject.eval.letters import join_letters, parse_letters
from medinject.eval.protocol import Protocol, configured_new_tokens

SEPARATORS = (",", " ", ", ")  # kept only where the tokenizer writes them as one token


class LenientProtocol(Protocol):
    name = EvalProtocol.lenient

    def prompts(self, tokenizer, items: list[Example], prompt: DictConfig) -> list[str]:
        hints = dict(prompt.task_hints)
        return [prompt_text(tokenizer, item, prompt.system, hints) for item in items]

    def new_tokens(self, task: str, n_options: int, settings: DictConfig) -> int:
        return configured_new_tokens(task, settings)

    def allowed_tokens(self, tokenizer, options: list[tuple[str, ...]]) -> AllowedTokens:
        separators = [t for t in (single_token(tokenizer, s) for s in SEPARATORS) if t is not None]
        letters = [option_token_ids(tokenizer, opts) for opts in options]
        return AllowedTokens([ids + separators + [tokenizer.eos_token_id] for ids in letters], letters)

    def read_letters(self, text: str, item: Example) -> str:
        return join_letters(parse_letters(text, item.options))
