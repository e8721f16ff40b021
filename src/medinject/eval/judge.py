"""LLM-as-judge for open answers: does the answer cover the essential information of the reference?

The judge is a rubric (what it is asked, how its verdict is read: `medinject.eval.judge_rubric`,
`eval.judge.rubric`) sent through a transport (a local model or an OpenAI-compatible endpoint:
`medinject.eval.judge_transport`, `eval.judge.backend`). Verdicts are 1, 0, or None when the judge's
output cannot be read; None is counted and reported, never scored as 0. Verdicts are cached in
`<cache_dir>/judge/verdicts.jsonl`, keyed by a hash of (the judge's messages, judge, new tokens), so
re-evaluating does not pay twice. Either transport decodes only the generated tokens (the released
script cut outputs at the unpadded prompt length, which under left padding reads the prompt's tail).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig

from medinject.config import JudgeBackend
from medinject.eval.judge_rubric import (  # noqa: F401  (the rubrics' names, where tests and callers find them)
    RELEASED_NEW_TOKENS,
    RELEASED_SYSTEM_PROMPT,
    parse_verdict,
    parse_verdict_released,
    released_user_turn,
    rubric_for,
)
from medinject.eval.judge_transport import TRANSPORTS, check_endpoint  # noqa: F401
from medinject.util.errors import UserError


def judge_id(cfg: DictConfig) -> str:
    return f"{cfg.backend.value}:{cfg.model}" + (f"@{cfg.base_url}" if cfg.backend == JudgeBackend.openai else "")


class Judge:
    def __init__(self, cfg: DictConfig, cache_dir: str, device: str = "cpu"):
        if cfg.backend == JudgeBackend.none:
            raise ValueError("no judge configured")
        if not cfg.model:
            raise UserError("eval.judge.model: a judge needs a model (a path or hub id, or the served model's name)")
        if cfg.backend == JudgeBackend.openai and not cfg.base_url:
            raise UserError("eval.judge.base_url: the openai backend needs the endpoint, e.g. http://127.0.0.1:8000/v1")
        self.cfg = cfg
        self.device = device  # local backend: a device, or "auto" for transformers' device_map over every GPU
        self.id = judge_id(cfg)
        self.rubric = rubric_for(cfg)
        self.transport = TRANSPORTS[JudgeBackend(cfg.backend)](cfg, device)
        self.cache_path = Path(cache_dir) / "judge" / "verdicts.jsonl"
        self.cache = self._read_cache()
        self.calls = 0

    def _read_cache(self) -> dict[str, dict]:
        cache = {}
        if self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash: ignore it
                    continue
                cache[entry["key"]] = entry
        return cache

    @property
    def max_new_tokens(self) -> int:
        return self.rubric.max_new_tokens

    def parse(self, output: str) -> int | None:
        return self.rubric.parse(output)

    def _key(self, messages: list[dict[str, str]]) -> str:
        parts = json.dumps([messages, self.id, self.max_new_tokens], ensure_ascii=False)
        return hashlib.sha256(parts.encode()).hexdigest()

    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        """The judge's conversation for one answer, under the configured rubric."""
        return self.rubric.messages(question, reference, answer)

    def verdicts(self, items: list[tuple[str, str, str]]) -> list[tuple[int | None, str]]:
        """(verdict, raw judge output) for each (question, reference, answer)."""
        conversations = [self.messages(*item) for item in items]
        keys = [self._key(c) for c in conversations]
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        if todo:
            prompts = [conversations[i] for i in todo]
            outputs = self.transport(prompts, self.max_new_tokens)
            self.calls += len(prompts)
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as handle:
                for i, output in zip(todo, outputs):
                    entry = {"key": keys[i], "verdict": self.parse(output), "output": output}
                    self.cache[keys[i]] = entry
                    handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return [(self.cache[k]["verdict"], self.cache[k]["output"]) for k in keys]
