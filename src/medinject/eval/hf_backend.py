"""Evaluation through transformers (`eval.backend=hf`): the run's model where it is, decoded by
`medinject.eval.decoding` in batches of `eval.batch_size`. Multiple choice shares one prefill between
its greedy and constrained rows; with `eval.batch_size=1` each is a plain `generate` call per item
instead (bench/eval_speed.py's peer). Nothing is moved or copied: closing the engine frees nothing.
"""

from __future__ import annotations

from medinject.config import EvalSettings

from medinject.eval.decoding import decode_choices, generate
from medinject.eval.engine import Engine


class HfEngine(Engine):
    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, int(batch_size)

    @classmethod
    def for_run(cls, model, tokenizer, cfg: EvalSettings) -> HfEngine:
        return cls(model, tokenizer, cfg.eval.batch_size)

    def generate(self, prompts: list[str], max_new_tokens: int | list[int], desc: str = "") -> list[str]:
        return generate(self.model, self.tokenizer, prompts, self.batch_size, max_new_tokens, desc)

    def decode_choices(self, prompts, max_new_tokens, constraint, letters, desc: str = ""):
        if self.batch_size > 1:
            return decode_choices(self.model, self.tokenizer, prompts, self.batch_size, max_new_tokens, constraint, letters, desc)
        greedy = generate(self.model, self.tokenizer, prompts, 1, max_new_tokens, desc)
        constrained, first = generate(self.model, self.tokenizer, prompts, 1, max_new_tokens, desc, constraint, letters)
        return greedy, constrained, first
