"""SDPA that attends within each example of a padding-free row instead of over the whole row.

A padding-free batch is one row holding a micro-batch's examples back to back, positions restarting
at each. With transformers' `sdpa`, that row gets a (row length)^2 block-diagonal mask and the kernel
computes every block of it: (n L)^2 for n examples of length L instead of n L^2 / 2 causal, about 2n
times the attention work (16x for rows of 8), and a (row length)^2 mask in memory. `sdpa_varlen` (registered with
transformers on import) runs the same SDPA once per example with `is_causal=True` (or, on CUDA in
half precision, torch's variable-length flash attention over the whole row), so a padding-free row
costs what its examples cost. Everything else (padded batches, generation with a KV cache) goes to
transformers' own `sdpa`, unchanged.

Examples are found from `cu_seq_lens_q` when the batch carries it, otherwise from the position ids
(where they do not go up by one), once per forward (cached on the position tensor).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import weakref

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    sdpa_mask,
)

log = logging.getLogger(__name__)

NAME = "sdpa_varlen"

try:  # torch >= 2.10, CUDA only; its keywords changed between releases
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn

    _VARLEN_PARAMS = set(inspect.signature(_varlen_attn).parameters)
except (ImportError, TypeError, ValueError):  # pragma: no cover - older torch
    _varlen_attn, _VARLEN_PARAMS = None, set()

_NOT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)  # sdpa(enable_gqa=...)


class _Segments:
    """The examples of one forward's rows, found once and reused by every layer (and by the
    recomputation of gradient checkpointing): the last key tensor seen, held weakly."""

    def __init__(self):
        self.key: weakref.ref | None = None
        self.rows: list[list[int]] = []
        self.cu: dict[torch.device, torch.Tensor] = {}

    def get(self, kwargs: dict, batch: int, length: int) -> list[list[int]] | None:
        """Per row, the start of each example and the row's end: [[0, 120, 415, length], ...]."""
        cu = kwargs.get("cu_seq_lens_q")
        key = cu if cu is not None and batch == 1 else kwargs.get("position_ids")
        if key is None:
            return None
        if self.key is not None and self.key() is key:
            return self.rows
        if key is cu:
            rows = [cu.tolist()]
            self.cu = {cu.device: cu.to(torch.int32)}
        else:
            pos = key.expand(batch, -1) if key.shape[0] != batch else key
            starts = torch.ones_like(pos, dtype=torch.bool)
            starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
            rows = [[*row.nonzero().flatten().tolist(), length] for row in starts.cpu()]  # one host sync per forward
            self.cu = {}
        self.key, self.rows = weakref.ref(key), rows
        return rows

    def cu_on(self, device: torch.device) -> torch.Tensor:
        if device not in self.cu:
            self.cu[device] = torch.tensor(self.rows[0], dtype=torch.int32).to(device)
        return self.cu[device]


_segments = _Segments()


def sdpa_varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Shapes as transformers' sdpa: query (batch, heads, length, dim); returns (batch, length, heads, dim)."""
    q_len = query.shape[2]
    if (
        attention_mask is not None
        or q_len == 1
        or key.shape[2] != q_len
        or kwargs.get("sliding_window")
        or kwargs.get("position_bias") is not None
        or not getattr(module, "is_causal", True)
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    rows = _segments.get(kwargs, query.shape[0], q_len)
    if rows is None or all(len(row) == 2 for row in rows):  # one sequence per row: plain causal SDPA
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)

    groups = getattr(module, "num_key_value_groups", 1)
    if _varlen_attn is not None and query.is_cuda and query.shape[0] == 1 and dropout == 0.0:
        out = _flash_varlen(query, key, value, rows[0], scaling, groups)
        if out is not None:
            return out, None

    gqa = {}
    if groups > 1:
        if _GQA:
            gqa["enable_gqa"] = True
        else:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    outputs = []
    # On CUDA, not cuDNN's attention: it builds a plan for every new sequence length it sees.
    with sdpa_kernel(_NOT_CUDNN) if query.is_cuda else contextlib.nullcontext():
        for b, bounds in enumerate(rows):
            parts = [
                F.scaled_dot_product_attention(
                    query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                    dropout_p=dropout, scale=scaling, is_causal=True, **gqa,
                )
                for s, e in itertools.pairwise(bounds)
            ]
            outputs.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(outputs, dim=0) if len(outputs) > 1 else outputs[0]
    return out.transpose(1, 2).contiguous(), None


_varlen_broken = False


def _flash_varlen(query, key, value, bounds: list[int], scaling, groups: int):
    """torch's variable-length flash attention over the whole row (CUDA, half precision); None where
    this torch or these inputs cannot use it."""
    global _varlen_broken
    if _varlen_broken:
        return None
    dtype = query.dtype
    if torch.is_autocast_enabled(query.device.type):  # what autocast would run sdpa in
        dtype = torch.get_autocast_dtype(query.device.type)
    if dtype not in (torch.float16, torch.bfloat16):
        return None
    cu = _segments.cu_on(query.device)
    longest = max(e - s for s, e in itertools.pairwise(bounds))
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # (length, heads, dim)
    causal = {"window_size": (-1, 0)} if "window_size" in _VARLEN_PARAMS else {"is_causal": True}
    if groups > 1:
        if "enable_gqa" in _VARLEN_PARAMS:
            causal["enable_gqa"] = True
        else:  # torch 2.11: no GQA
            k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
    try:
        out = _varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **causal)
    except (RuntimeError, TypeError, ValueError) as err:
        log.warning("torch varlen_attn unavailable (%s): attending one example at a time", str(err).splitlines()[0])
        _varlen_broken = True
        return None
    return out.unsqueeze(0)


def sdpa_varlen_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, local_size=None, **kwargs):
    """No mask for a full causal forward without padding (packed or not): the attention function finds
    the examples itself; transformers' sdpa mask otherwise."""
    if attention_mask is None and local_size is None and q_length == kv_length and q_offset == 0 and kv_offset == 0:
        return None
    return sdpa_mask(
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
        attention_mask=attention_mask, local_size=local_size, **kwargs,
    )


AttentionInterface.register(NAME, sdpa_varlen_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_varlen_mask)
assert NAME in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def use_varlen_attention(model) -> bool:
    """Switch a model running transformers' `sdpa` on full causal attention to `sdpa_varlen`, in place.
    True when the model runs `sdpa_varlen` afterwards. Models with sliding-window layers or another
    attention implementation (flash attention, eager) are left as they are."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    current = config._attn_implementation
    if current == NAME:
        return True
    if current != "sdpa" or any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return False
    try:
        base.set_attn_implementation(NAME)
    except (ValueError, ImportError, AttributeError) as err:
        log.warning("cannot switch attention to %s: %s", NAME, str(err).splitlines()[0])
        return False
    return config._attn_implementation == NAME
