"""LLM-as-judge for open answers: does the answer cover the essential information of the reference?

Verdicts are 1, 0, or None when the judge's output cannot be read; None is counted and reported,
never scored as 0. Two backends: a local transformers model (batched greedy generation) and an
OpenAI-compatible chat-completions endpoint (key read from an environment variable at call time,
never written anywhere). Verdicts are cached in `<cache_dir>/judge/verdicts.jsonl`, keyed by a hash
of (the judge's messages, judge, new tokens), so re-evaluating does not pay twice.

Two rubrics (`eval.judge.rubric`): `medinject`, a French rubric in one user turn (the text is
`eval.judge.medinject_rubric`), read from the start of the output; and `released`, the study's
released judge: an English system prompt, a `Question / Candidate_answer / Ground_truth` user turn,
1 new token, the verdict the first match of `\b[01]\b`, else of `[01]`. Either way only the
generated tokens are decoded (the released script cut outputs at the unpadded prompt length, which
under left padding reads the prompt's tail; medinject's `generate` slices at the padded width).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import torch
from omegaconf import DictConfig

from medinject.config import JudgeBackend, JudgeRubric
from medinject.eval.decoding import generate
from medinject.util.errors import UserError

log = logging.getLogger(__name__)

_VERDICT = re.compile(r"^\W*([01])(?!\d)")


def parse_verdict(text: str) -> int | None:
    """1 or 0 when the output starts with it (after spaces or punctuation), else None."""
    match = _VERDICT.match(text.strip())
    return int(match.group(1)) if match else None


# The released judge, in our words from its description (README, "Evaluation": the two protocols): English, 1 new token.
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


def check_endpoint(cfg: DictConfig) -> None:
    """Before training: the OpenAI-compatible judge answers at `eval.judge.base_url` (its model list,
    `GET /models`, which vLLM's and other servers serve without cost)."""
    if not cfg.base_url:
        raise UserError("eval.judge.base_url: the openai backend needs the endpoint, e.g. http://127.0.0.1:8000/v1")
    url = cfg.base_url.rstrip("/") + "/models"
    key = os.environ.get(cfg.api_key_env, "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=min(float(cfg.timeout_s), 10.0)):
            pass
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise UserError(f"eval.judge.base_url: {url} refuses the key in ${cfg.api_key_env} (HTTP {err.code})") from None
        # another HTTP answer (e.g. 404 where /models is not served): the server is there
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise UserError(f"eval.judge.base_url: {url} is not reachable ({getattr(err, 'reason', err)}); start the judge's server first") from None


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
        self.cache_path = Path(cache_dir) / "judge" / "verdicts.jsonl"
        self.cache = self._read_cache()
        self._model = self._tokenizer = None
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
    def released(self) -> bool:
        return self.cfg.rubric == JudgeRubric.released

    @property
    def max_new_tokens(self) -> int:
        return RELEASED_NEW_TOKENS if self.released else self.cfg.max_new_tokens

    def parse(self, output: str) -> int | None:
        return parse_verdict_released(output) if self.released else parse_verdict(output)

    def _key(self, messages: list[dict[str, str]]) -> str:
        parts = json.dumps([messages, self.id, self.max_new_tokens], ensure_ascii=False)
        return hashlib.sha256(parts.encode()).hexdigest()

    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        """The judge's conversation for one answer, under the configured rubric."""
        if self.released:
            return [
                {"role": "system", "content": RELEASED_SYSTEM_PROMPT},
                {"role": "user", "content": released_user_turn(question, reference, answer)},
            ]
        return [{"role": "user", "content": self.cfg.medinject_rubric.format(question=question, reference=reference, answer=answer)}]

    def verdicts(self, items: list[tuple[str, str, str]]) -> list[tuple[int | None, str]]:
        """(verdict, raw judge output) for each (question, reference, answer)."""
        conversations = [self.messages(*item) for item in items]
        keys = [self._key(c) for c in conversations]
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        if todo:
            prompts = [conversations[i] for i in todo]
            outputs = self._local(prompts) if self.cfg.backend == JudgeBackend.local else self._openai(prompts)
            self.calls += len(prompts)
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as handle:
                for i, output in zip(todo, outputs):
                    entry = {"key": keys[i], "verdict": self.parse(output), "output": output}
                    self.cache[keys[i]] = entry
                    handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return [(self.cache[k]["verdict"], self.cache[k]["output"]) for k in keys]

    @torch.no_grad()
    def _local(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._model is None:
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.cfg.model)
                placement = {"device_map": "auto"} if self.device == "auto" else {"device_map": {"": self.device}}
                self._model = AutoModelForCausalLM.from_pretrained(self.cfg.model, dtype="auto", **placement).eval()
            except (OSError, ValueError) as err:
                raise UserError(f"eval.judge.model: cannot load {self.cfg.model!r}: {str(err).splitlines()[0]}") from None
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
            log.info("judge %s loaded on %s", self.cfg.model, self.device)
        texts = [self._tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        return generate(self._model, self._tokenizer, texts, self.cfg.batch_size, self.max_new_tokens, "judge")

    def _openai(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        key = os.environ.get(self.cfg.api_key_env, "")
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        outputs = []
        for prompt in prompts:
            body = {
                "model": self.cfg.model,
                "messages": prompt,
                "temperature": 0,
                "max_tokens": self.max_new_tokens,
            }
            request = urllib.request.Request(
                url,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    reply = json.loads(response.read())
            except (urllib.error.URLError, TimeoutError) as err:
                raise UserError(f"eval.judge.base_url: {url} failed: {getattr(err, 'reason', err)}") from None
            try:
                outputs.append(reply["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError):
                outputs.append("")  # an answer without content: unparsable, counted as such
        return outputs
