"""GPU memory estimate for one adapter fine-tuning step, from the architecture alone (no weights, no hub).

Everything is counted in bytes, analytically:

* parameter counts of a Qwen3 decoder (exact: checked against transformers on the meta device);
* base weights: bitsandbytes 4-bit linears (packed values + quantization statistics, exact) and the
  weights left unquantized (embeddings, RMSNorm weights, lm_head);
* adapter weights, their gradients and AdamW's two moments, all fp32 (peft keeps adapter weights in
  fp32 under a bf16 base);
* activations saved for backward, from a per-token, per-layer inventory of the tensors autograd keeps
  (see `activation_terms`), with or without gradient checkpointing;
* the loss over the vocabulary: medinject's training step (`medinject.train.loss`) computes it in
  chunks of about 2**26 logits, at the labelled positions only (`loss="chunked"`, the default); the
  full fp32 logits of transformers' `model(**batch).loss` (`loss="full_logits"`) would dominate with
  Qwen3's 151,936-token vocabulary (42 of 54 GiB at 12 x 2048 tokens);
* what the CUDA caching allocator and the CUDA context hold on top.

The inventory was written for transformers 5 + peft 0.21 + bitsandbytes 0.50 under bf16 autocast
(Lightning's `bf16-mixed`) with SDPA or flash attention, and compared with measured peaks of a random
Qwen3-4B-shaped model on one H100 (torch 2.11): peak allocated memory within 1.2 %, device memory in
use within 4 % (QLoRA, LoRA, DoRA and QDoRA, with and without checkpointing, 1 to 12 sequences of 1024
to 4096 tokens), with the full-logits loss of the time. The chunked loss's terms are counted from its
code and have not been measured on a GPU yet. Not modelled: SDPA with padding-free batches builds a
(tokens x tokens) bool mask (+0.56 GiB at 12 x 2048 tokens; flash-attention needs none), backward's own
temporaries, and Liger's fused kernel (used instead of the chunked loss on CUDA when installed), whose
chunks are smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Iterable, Sequence

from medinject.sweep.architecture import (PROJECTIONS, QWEN3_4B_INSTRUCT_2507, Architecture, ParameterCounts, adapter_method,
                                          adapter_parameters, architecture_for, config_get, enum_value, qwen3_4b_instruct_2507,
                                          resolve_targets)
from medinject.train.loss import CHUNK_LOGITS

GiB = 2**30

DTYPE_BYTES = {"float32": 4, "fp32": 4, "32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "16": 2}

# bitsandbytes 4-bit layout (bitsandbytes.functional.quantize_4bit, 0.50): values packed two per byte,
# one absmax per block of 64 values; with double quantization the absmax values are shifted by their
# mean (one fp32 `offset`) and stored as uint8 codes with one fp32 absmax per 256 of them plus their
# 256-entry fp32 code book. Every layer also keeps the 16-entry fp32 NF4/FP4 code book.
BNB_BLOCKSIZE = 64
BNB_NESTED_BLOCKSIZE = 256
BNB_4BIT_CODE_BYTES = 16 * 4
BNB_NESTED_CODE_BYTES = 256 * 4

# Loss over the vocabulary (transformers' ForCausalLMLoss upcasts the logits to fp32, then
# cross-entropy = log_softmax + nll). The peak is at the start of backward, where the fp32
# log-softmax output (kept for backward), its incoming gradient and the outgoing logits gradient are
# alive together: 3 x 4 bytes per logit. The forward side holds less: bf16 logits + fp32 copy +
# fp32 log-softmax output = 10 bytes per logit.
LOSS_BYTES_PER_LOGIT = 12

# The chunked loss (medinject.train.loss) holds, per chunk, the fp32 logits (turned in place into their
# gradient) beside either the autocast-dtype logits they were upcast from or the autocast-dtype gradient
# they are cast back to: 4 + 2 bytes per logit of the chunk under bf16 autocast (4 in fp32).
CHUNKED_LOSS_BYTES_PER_LOGIT = {2: 6, 4: 4}

# Measured on the H100 runs above: the caching allocator's reserved memory exceeded the allocated peak
# by about one fp32 logits tensor (0.9 to 1.2 x batch*seq*vocab*4 bytes): the freed fp32 copy of the
# logits stays cached. PyTorch frees cached blocks and retries before raising out-of-memory, so this
# is memory the job shows in nvidia-smi rather than memory it strictly needs.
ALLOCATOR_CACHE_BYTES_PER_LOGIT = 4

# CUDA context, kernels and cuBLAS workspaces, outside PyTorch's allocator: device memory in use minus
# reserved memory was 0.75 GiB on an H100 with torch 2.11 / CUDA 13 (other cards and versions differ by
# a few hundred MiB).
CUDA_OVERHEAD_BYTES = 768 * 2**20


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype name (float32, bfloat16, float16, or their short forms)."""
    key = str(name).removeprefix("torch.").lower()
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return DTYPE_BYTES[key]


def quantized_linear_bytes(n_values: int, double_quant: bool, blocksize: int = BNB_BLOCKSIZE) -> int:
    """Bytes of one bitsandbytes 4-bit weight of `n_values` values, its quantization state included."""
    blocks = math.ceil(n_values / blocksize)
    packed = (n_values + 1) // 2
    if not double_quant:
        return packed + 4 * blocks + BNB_4BIT_CODE_BYTES
    nested_blocks = math.ceil(blocks / BNB_NESTED_BLOCKSIZE)
    return packed + blocks + 4 * nested_blocks + 4 + BNB_NESTED_CODE_BYTES + BNB_4BIT_CODE_BYTES


def base_weight_bytes(
    arch: Architecture, quantization: str | None, double_quant: bool, weight_dtype: str, upcast_unquantized: bool
) -> int:
    """Frozen base weights. bitsandbytes quantizes the seven projections (not the embeddings, norms or
    lm_head); biases and everything else stay in `weight_dtype`, or fp32 when `upcast_unquantized`
    (peft's prepare_model_for_kbit_training casts every bf16/fp16 weight that is not 4-bit to fp32)."""
    counts = arch.parameter_counts()
    if quantization is None:
        return counts.total * dtype_bytes(weight_dtype)
    unquantized_bytes = 4 if upcast_unquantized else dtype_bytes(weight_dtype)
    quantized = 0
    biases = 0
    for name, (fan_in, fan_out) in arch.linear_shapes().items():
        quantized += quantized_linear_bytes(fan_in * fan_out, double_quant)
        biases += arch.linear_parameters(name) - fan_in * fan_out
    layers = arch.num_hidden_layers
    return layers * quantized + (counts.total - counts.linear + layers * biases) * unquantized_bytes


def activation_terms(
    arch: Architecture,
    *,
    method: str,
    r: int,
    target_modules: Iterable[str] | str,
    lora_dropout: float,
    compute_bytes: int,
    linear_output_bytes: int,
) -> dict[str, int]:
    """Bytes autograd keeps for backward, per token and decoder layer, by named term.

    compute_bytes: autocast dtype (bf16: 2); linear_output_bytes: dtype of the base projections'
    outputs (the compute dtype, except under 4-bit weights, where bitsandbytes returns the input's
    dtype: fp32 once prepare_model_for_kbit_training has upcast the norms). Frozen base weights need
    no saved inputs; their outputs are kept only where a later op needs them.
    """
    method = adapter_method(method)
    h, q, kv, i = arch.hidden_size, arch.q_dim, arch.kv_dim, arch.intermediate_size
    shapes = arch.linear_shapes()
    targets = resolve_targets(arch, target_modules)
    fan_in = sum(shapes[n][0] for n in targets)
    fan_out = sum(shapes[n][1] for n in targets)
    a = compute_bytes
    return {
        # Qwen3RMSNorm upcasts its input to fp32 and keeps it: input_layernorm, post_attention_layernorm
        # (hidden), q_norm (all query heads), k_norm (all key heads).
        "RMSNorm fp32 inputs": 4 * (2 * h + q + kv),
        # SDPA / flash-attention keep rotated q and k, v and the output; no seq x seq matrix.
        "attention q, k, v, output": a * (2 * q + 2 * kv),
        "attention log-sum-exp (fp32 per head)": 4 * arch.num_attention_heads,
        # SwiGLU: gate (for SiLU's backward), SiLU(gate) and up (for the product's backward).
        "MLP gate, SiLU(gate), up": 3 * linear_output_bytes * i,
        # peft: dropout(x) cast to the compute dtype for lora_A (its weight gradient needs it) ...
        "LoRA lora_A inputs": a * fan_in,
        "LoRA dropout masks (bool)": fan_in if lora_dropout > 0 else 0,
        "LoRA rank-r activations": a * r * len(targets),
        # ... and DoRA keeps the base and LoRA outputs for the magnitude's gradient.
        "DoRA base and LoRA outputs": 2 * a * fan_out if method == "dora" else 0,
    }


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU memory of one training step, in bytes, by component.

    activations: tensors saved for backward (all layers; with gradient checkpointing only the
    layer inputs) and the final norm's input. weight_copies: frozen weights materialised again and
    kept until backward (DoRA recomputes each base projection from a dequantized/cast copy of its
    weight; with the full-logits loss, autocast's bf16 copy of an fp32 lm_head). recompute: one
    layer's activations rebuilt during backward with gradient checkpointing. logits: the loss's
    buffers at their peak (full logits: at the start of backward; chunked: one chunk's logits, the
    lm_head in the compute dtype, the labelled hidden states and their gradient). The loss and the
    recomputation never overlap, so the peak counts the larger of the two.
    """

    base_weights: int
    adapter_weights: int
    gradients: int
    optimizer_states: int
    activations: int
    weight_copies: int
    logits: int
    recompute: int
    allocator_cache: int
    overhead: int

    @property
    def static(self) -> int:
        """Held for the whole run: weights, adapter, gradients (kept across accumulation), AdamW."""
        return self.base_weights + self.adapter_weights + self.gradients + self.optimizer_states

    @property
    def peak_allocated(self) -> int:
        """What torch.cuda.max_memory_allocated() should report."""
        return self.static + self.activations + self.weight_copies + max(self.logits, self.recompute)

    @property
    def total(self) -> int:
        """Device memory in use at the peak (nvidia-smi): allocated + allocator cache + CUDA context."""
        return self.peak_allocated + self.allocator_cache + self.overhead

    def rows(self) -> list[tuple[str, float]]:
        """(label, GiB) per component, then the peak allocated and the total."""
        labels = {
            "base_weights": "base weights",
            "adapter_weights": "adapter weights (fp32)",
            "gradients": "adapter gradients (fp32)",
            "optimizer_states": "AdamW states (2 x fp32)",
            "activations": "activations",
            "weight_copies": "weight copies kept for backward",
            "logits": "loss over the vocabulary",
            "recompute": "checkpoint recomputation (1 layer)",
            "allocator_cache": "allocator cache (reserved, not allocated)",
            "overhead": "CUDA context and workspaces",
        }
        rows = [(labels[f.name], getattr(self, f.name) / GiB) for f in fields(self)]
        return rows + [("peak allocated", self.peak_allocated / GiB), ("total", self.total / GiB)]

    def format(self, title: str = "") -> str:
        """A small table in GiB."""
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        lines = [title] if title else []
        for label, gib in rows:
            if label == "peak allocated":
                lines.append("-" * (width + 11))
            lines.append(f"{label:<{width}}  {gib:7.2f} GiB")
        if self.recompute:
            lines.append("(the peak counts the larger of the loss and the recomputation: they never overlap)")
        return "\n".join(lines)


def estimate_memory(
    arch: Architecture,
    *,
    method: str = "lora",
    r: int = 16,
    target_modules: Iterable[str] | str = PROJECTIONS,
    quantization: str | None = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "bfloat16",
    weight_dtype: str | None = None,
    micro_batch: int = 1,
    seq_len: int = 2048,
    gradient_checkpointing: bool = True,
    lora_dropout: float = 0.05,
    optimizer: str = "adamw",
    upcast_unquantized: bool = True,
    overhead_bytes: int = CUDA_OVERHEAD_BYTES,
    loss: str = "chunked",
) -> MemoryEstimate:
    """Peak GPU memory of a LoRA / DoRA training step on `arch`.

    quantization: "nf4" / "fp4" (bitsandbytes 4-bit base) or None. compute_dtype: the autocast dtype
    (bf16 under Lightning's bf16-mixed). weight_dtype: dtype of the unquantized base weights
    (model.dtype; defaults to compute_dtype). upcast_unquantized: with a 4-bit base, the unquantized
    weights become fp32 (medinject's attach_adapter calls peft's prepare_model_for_kbit_training,
    which does this), and so does the residual stream that starts at the embeddings. Tokens per
    micro-batch are micro_batch * seq_len (padding-free batching packs at most as many).
    loss: "chunked" (medinject's training step; every token counted as labelled, the worst case) or
    "full_logits" (transformers' `model(**batch).loss`).
    """
    method = adapter_method(method)
    if quantization not in (None, "nf4", "fp4"):
        raise ValueError(f"quantization: {quantization!r} is not nf4, fp4 or None")
    if loss not in ("chunked", "full_logits"):
        raise ValueError(f"loss: {loss!r} is not chunked or full_logits")
    if optimizer.lower() != "adamw":
        raise ValueError(f"optimizer: only AdamW is modelled, not {optimizer!r}")
    a = dtype_bytes(compute_dtype)
    w = dtype_bytes(weight_dtype or compute_dtype)
    quantized = quantization is not None
    if quantized and upcast_unquantized:
        w = 4
    tokens = micro_batch * seq_len
    h, layers = arch.hidden_size, arch.num_hidden_layers
    targets = resolve_targets(arch, target_modules)
    shapes = arch.linear_shapes()

    n_adapter = adapter_parameters(arch, method, r, target_modules)
    terms = activation_terms(
        arch,
        method=method,
        r=r,
        target_modules=targets,
        lora_dropout=lora_dropout,
        compute_bytes=a,
        linear_output_bytes=w if quantized else a,
    )
    per_layer = sum(terms.values())

    # Frozen weights re-materialised and kept for backward, per layer: DoRA with dropout computes the
    # base output again from the (dequantized) weight, cast to the compute dtype and kept by F.linear
    # for the input gradient; an unquantized weight in another dtype than autocast's is cast and kept.
    layer_copies = 0
    if method == "dora" and lora_dropout > 0:
        layer_copies += a * sum(shapes[n][0] * shapes[n][1] for n in targets)
    if not quantized and w != a:
        layer_copies += a * sum(fan_in * fan_out for fan_in, fan_out in shapes.values())
    lm_head_copy = a * arch.vocab_size * h if w != a else 0
    final_norm = 4 * h * tokens  # the final RMSNorm's fp32 input

    if loss == "full_logits":
        # autocast's bf16 copy of the lm_head is kept for backward; the fp32 logits buffers peak at its start
        kept_lm_head = lm_head_copy
        loss_bytes = LOSS_BYTES_PER_LOGIT * tokens * arch.vocab_size
        cached = ALLOCATOR_CACHE_BYTES_PER_LOGIT * tokens * arch.vocab_size
    else:
        # the loss casts the lm_head once and drops the copy when it returns; the gradient with respect to
        # the labelled hidden states (residual dtype) is kept for backward (under `activations`), and the
        # labelled hidden states are gathered beside it while the loss runs
        kept_lm_head = 0
        chunk_logits = max(1, CHUNK_LOGITS // arch.vocab_size) * arch.vocab_size
        chunk_bytes = CHUNKED_LOSS_BYTES_PER_LOGIT[a] * min(chunk_logits, tokens * arch.vocab_size)
        loss_bytes = chunk_bytes + lm_head_copy + w * h * tokens
        cached = chunk_bytes + lm_head_copy  # freed when the loss returns, left in the allocator's cache
        final_norm += w * h * tokens  # the labelled hidden states' gradient

    if gradient_checkpointing:
        activations = layers * w * h * tokens + final_norm  # each layer's input, in the residual dtype
        weight_copies = kept_lm_head
        recompute = per_layer * tokens + layer_copies
    else:
        activations = layers * per_layer * tokens + final_norm
        weight_copies = layers * layer_copies + kept_lm_head
        recompute = 0

    return MemoryEstimate(
        base_weights=base_weight_bytes(arch, quantization, double_quant, weight_dtype or compute_dtype, upcast_unquantized),
        adapter_weights=4 * n_adapter,
        gradients=4 * n_adapter,
        optimizer_states=2 * 4 * n_adapter,
        activations=activations,
        weight_copies=weight_copies,
        logits=loss_bytes,
        recompute=recompute,
        allocator_cache=cached,
        overhead=overhead_bytes,
    )


def estimate_for_run(cfg: Any, arch: Architecture | None = None, seq_len: int | None = None) -> MemoryEstimate:
    """The estimate for a composed run config (adapter, trainer, model, data.max_length)."""
    adapter, trainer, model = cfg.adapter, cfg.trainer, cfg.model
    precision = str(config_get(trainer, "precision", "32-true"))
    if precision.startswith("bf16"):
        compute = "bfloat16"
    elif precision.startswith("16"):
        compute = "float16"
    else:
        compute = str(config_get(model, "dtype", "float32"))
    quantization = config_get(adapter, "quantization")
    return estimate_memory(
        arch or architecture_for(model),
        method=enum_value(config_get(adapter, "method", "lora")),
        r=int(config_get(adapter, "r", 16)),
        target_modules=list(config_get(adapter, "target_modules", PROJECTIONS)),
        quantization=None if quantization is None else enum_value(quantization),
        double_quant=bool(config_get(adapter, "double_quant", True)),
        compute_dtype=compute,
        weight_dtype=str(config_get(model, "dtype", compute)),
        micro_batch=int(config_get(trainer, "batch_size", 1)),
        seq_len=int(seq_len if seq_len is not None else config_get(cfg.data, "max_length", 2048)),
        gradient_checkpointing=bool(config_get(trainer, "gradient_checkpointing", False)),
        lora_dropout=float(config_get(adapter, "dropout", 0.0)),
    )


__all__: Sequence[str] = (
    "Architecture",
    "MemoryEstimate",
    "ParameterCounts",
    "PROJECTIONS",
    "QWEN3_4B_INSTRUCT_2507",
    "activation_terms",
    "adapter_parameters",
    "architecture_for",
    "base_weight_bytes",
    "estimate_for_run",
    "estimate_memory",
    "quantized_linear_bytes",
    "qwen3_4b_instruct_2507",
)
