"""How the judge's conversations reach a model (`eval.judge.backend`), apart from what they say
(`medinject.eval.judge_rubric`): a local transformers model (batched greedy generation, only the
generated tokens decoded) or an OpenAI-compatible chat-completions endpoint (the key read from an
environment variable at call time, never written anywhere). Each transport turns conversations into
raw outputs, in order.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request

import torch
from omegaconf import DictConfig

from medinject.config import JudgeBackend
from medinject.eval.decoding import generate
from medinject.util.errors import UserError

log = logging.getLogger(__name__)


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


class LocalTransport:
    """A transformers model, loaded on first use on `device` (or spread over every GPU with "auto")."""

    def __init__(self, cfg: DictConfig, device: str):
        self.cfg, self.device = cfg, device
        self._model = self._tokenizer = None

    @torch.no_grad()
    def __call__(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
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
        texts = [self._tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        return generate(self._model, self._tokenizer, texts, self.cfg.batch_size, max_new_tokens, "judge")


class OpenAITransport:
    """POST /chat/completions, one conversation at a time, temperature 0."""

    def __init__(self, cfg: DictConfig, device: str):
        self.cfg = cfg

    def __call__(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
        key = os.environ.get(self.cfg.api_key_env, "")
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        outputs = []
        for conversation in conversations:
            body = {"model": self.cfg.model, "messages": conversation, "temperature": 0, "max_tokens": max_new_tokens}
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


TRANSPORTS = {JudgeBackend.local: LocalTransport, JudgeBackend.openai: OpenAITransport}
