"""Base model (tiny, local folder or hub id) -> optional bitsandbytes 4-bit weights -> peft adapter."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from medinject.config import AdapterConfig, ModelConfig, TrainerConfig
from medinject.util.errors import UserError
from medinject.model.tiny import ensure_tiny

log = logging.getLogger(__name__)


def _dtype(name: str, key: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"{key}: {name!r} is not a torch dtype (float32, bfloat16, float16)")
    return dtype


def _attn_implementation(requested: str | None) -> str | None:
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        log.warning("flash-attn is not installed: using attn_implementation=sdpa instead of flash_attention_2")
        return "sdpa"
    return requested


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def quantized_weights_device(trainer_cfg: DictConfig | None) -> str | None:
    """Where this process must load a 4-bit base: its own GPU, cuda:<local rank> (or the local rank's
    entry of a `trainer.devices` list), as Lightning will place the rank. bitsandbytes quantizes on
    the device the weights are loaded to, and without a device map transformers loads them to
    `torch.cuda.current_device()`, which is cuda:0 in every rank before Lightning sets it. None on
    CPU trainers."""
    if trainer_cfg is None:
        return None
    accelerator = str(trainer_cfg.accelerator)
    if accelerator not in ("gpu", "cuda") and not (accelerator == "auto" and torch.cuda.is_available()):
        return None
    from medinject.util.cluster import local_rank

    rank = local_rank()
    devices = trainer_cfg.local_gpus or trainer_cfg.devices
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return f"cuda:{int(list(devices)[rank])}"
    return f"cuda:{rank}"


def load_tokenizer_and_model(model_cfg: DictConfig, adapter_cfg: DictConfig, trainer_cfg: DictConfig | None = None):
    """The tokenizer and the base model; with `trainer_cfg`, a 4-bit base is loaded straight onto
    this rank's GPU (`quantized_weights_device`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = model_cfg.path
    if model_cfg.build_tiny is not None:
        ensure_tiny(path, model_cfg.build_tiny, model_cfg.model_max_length)
    if _looks_local(path) and not (Path(path).expanduser() / "config.json").is_file():
        raise UserError(f"model.path: {path} is not a model folder (no config.json there)")

    quantization, placement = None, {}
    if adapter_cfg.quantization is not None:
        if (device := quantized_weights_device(trainer_cfg)) is not None:
            placement = {"device_map": {"": device}}
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=adapter_cfg.quantization.value,
            bnb_4bit_use_double_quant=adapter_cfg.double_quant,
            bnb_4bit_compute_dtype=_dtype(adapter_cfg.compute_dtype, "adapter.compute_dtype"),
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=model_cfg.model_max_length)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=_dtype(model_cfg.dtype, "model.dtype"),
            quantization_config=quantization,
            attn_implementation=_attn_implementation(model_cfg.attn_implementation),
            **placement,
        )
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model.path: cannot load {path!r}: {first_line}") from None
    if quantization is not None:
        _keep_cpu_4bit_weights_trainable(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UserError(f"model.path: the tokenizer of {path!r} has no chat template")
    return tokenizer, model


def _keep_cpu_4bit_weights_trainable(model) -> None:
    """bitsandbytes repacks a Linear4bit weight for fast CPU inference the first time the layer runs in
    eval mode without grad, and from then on uses a kernel with no backward: gradients stop flowing
    through the frozen base layers, silently (seen with bitsandbytes 0.50 on AVX512-BF16 CPUs). A run
    evaluates its probe loss before training, so the repacking is switched off."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def attach_adapter(model, adapter_cfg: DictConfig, gradient_checkpointing: bool):
    """Wrap the base model in a peft LoRA / DoRA adapter; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    # Non-reentrant checkpointing: the reentrant kind breaks DDP ("marked ready twice") and needs
    # inputs that require grad.
    checkpointing = {"use_reentrant": False}
    if adapter_cfg.quantization is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=checkpointing
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    model.config.use_cache = False
    config = LoraConfig(
        r=adapter_cfg.r,
        lora_alpha=adapter_cfg.alpha,
        lora_dropout=adapter_cfg.dropout,
        target_modules=list(adapter_cfg.target_modules),
        use_dora=adapter_cfg.method.value == "dora",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"adapter.target_modules: {str(err).splitlines()[0]}") from None


class LoadedModel(NamedTuple):
    tokenizer: Any
    model: Any  # the base model with its adapter attached
    record: dict  # what the run record says of it


def load_model(model: ModelConfig, adapter: AdapterConfig, trainer: TrainerConfig) -> LoadedModel:
    """The model stage: the tokenizer and base model (`model`), quantized and placed as `adapter` and
    `trainer` say, with its adapter attached (`trainer.gradient_checkpointing` too)."""
    tokenizer, base = load_tokenizer_and_model(model, adapter, trainer)
    attached = attach_adapter(base, adapter, trainer.gradient_checkpointing)
    trainable, total = parameter_counts(attached)
    log.info("model %s: %d trainable of %d parameters", model.name, trainable, total)
    info = {
        "name": model.name,
        "path": model.path,
        "adapter": adapter.name,
        "method": adapter.method.value,
        "quantization": adapter.quantization.value if adapter.quantization else None,
        "trainable_params": trainable,
        "total_params": total,
    }
    return LoadedModel(tokenizer, attached, info)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total); a 4-bit weight counts as its unpacked number of values."""
    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        n = math.prod(quant_state.shape) if quant_state is not None else param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
