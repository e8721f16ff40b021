"""The causal-LM loss without the full logits.

transformers' `model(**batch).loss` computes the logits at every position of the batch, upcasts them to
fp32 and takes the cross-entropy: with Qwen3's 151,936-token vocabulary that is 4 bytes x 151,936 per
token for the fp32 copy alone (about 42 GiB of a 54 GiB peak at 12 x 2048 tokens). Here the decoder runs
as usual, then only the positions that have a label are kept (with a completion-only loss, the answer
tokens; with the loss over whole sequences, every token but padding and each example's first), and the
output projection and cross-entropy run over those in chunks of about `CHUNK_LOGITS` logits. Each chunk's
gradient with respect to the hidden states (and to the output projection's weight, where it trains) is
computed in the forward pass, so no chunk's logits outlive it. On CUDA with Liger installed, Liger's
fused linear cross-entropy (Triton) does the same work.

The result equals transformers' loss: the mean token cross-entropy over the labelled positions, with the
logits computed in the autocast dtype and upcast to fp32 as transformers does (tests/test_loss.py).

Two cases take other roads to the same value:
* an output projection that is more than a frozen or plain `nn.Linear` (`lm_head` in
  `adapter.target_modules`, or in `modules_to_save`): its own forward runs on each chunk, recomputed in
  the backward pass (activation checkpointing), so its adapter gets its gradient and still no chunk's
  logits outlive it;
* fp16 autocast (`trainer.precision=16-mixed`): the gradients are built in fp32, since (softmax -
  one-hot) / N underflows in fp16 before the loss scale, which only reaches them in the backward pass,
  could lift it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from medinject.data.prompts import IGNORE_INDEX

# Logits per chunk: 2**26 fp32 logits are 256 MiB (441 positions of Qwen3's 151,936-token vocabulary).
CHUNK_LOGITS = 2**26


def causal_lm_loss(model, batch: dict[str, torch.Tensor], chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of `batch` (input_ids, labels, and
    attention_mask or position_ids), for a transformers causal LM or a peft model wrapping one.
    chunk_tokens: positions per chunk (default: CHUNK_LOGITS // vocabulary size)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # use_cache=False: see AdapterFineTuning.training_step (padding-free rows need it)
    hidden = causal_lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    # position t predicts token t + 1: the target of position t is the label at t + 1
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
    labelled = targets != IGNORE_INDEX
    head = causal_lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear:  # adapted or swapped (peft LoRA / DoRA layer, modules_to_save)
        return module_cross_entropy(head, hidden[labelled], targets[labelled], chunk_tokens)
    return linear_cross_entropy(hidden[labelled], head.weight, targets[labelled], chunk_tokens)


def module_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """mean(cross_entropy(head(hidden), targets)) chunk by chunk through the head's own forward, each
    chunk's logits recomputed in the backward pass instead of kept."""
    vocab = head.out_features if hasattr(head, "out_features") else head.weight.shape[0]
    chunk = chunk_tokens or max(1, CHUNK_LOGITS // vocab)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk):
        total = total + checkpoint(_summed_cross_entropy, head, hidden[start : start + chunk], targets[start : start + chunk], use_reentrant=False)
    return total / targets.numel()


def _summed_cross_entropy(head, hidden, targets):
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """mean(cross_entropy(hidden @ weight.T, targets)) over (N, H) hidden states, without the (N, V) logits."""
    fp16 = torch.is_autocast_enabled(hidden.device.type) and torch.get_autocast_dtype(hidden.device.type) == torch.float16
    if hidden.is_cuda and _liger_loss is not None and not fp16:  # Liger keeps its gradients in the input dtype
        return _liger_loss(hidden, weight, targets)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens or max(1, CHUNK_LOGITS // weight.shape[0]))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Forward: the loss chunk by chunk, and with it the gradients (softmax - one-hot) / N, pushed
    through the projection at once; backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):
        # The projection runs in the autocast dtype (bf16 under bf16-mixed), as the model's own lm_head
        # would; the weight is cast once here (autocast would cast a frozen weight again for every chunk).
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        weight_in_dtype = weight.to(dtype)
        # fp16 has too few exponent bits for (softmax - one-hot) / N: build the gradients in fp32
        grad_dtype = torch.float32 if dtype == torch.float16 else dtype
        weight_for_grad = weight_in_dtype if grad_dtype == dtype else weight.float()
        count = targets.numel()
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32 if grad_dtype != dtype else hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        with torch.autocast(device, enabled=False):  # every product below in the dtype chosen for it
            for start in range(0, count, chunk_tokens):
                h = hidden[start : start + chunk_tokens]
                t = targets[start : start + chunk_tokens]
                logits = F.linear(h.to(dtype), weight_in_dtype).float()  # as transformers' loss upcasts them
                log_sum_exp = torch.logsumexp(logits, dim=-1)
                loss += (log_sum_exp - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                # d(mean loss)/d(logits) = (softmax - one-hot) / N, built in place in the logits' buffer,
                # then in the autocast dtype (as autograd casts it back through the fp32 upcast), fp32 under fp16
                grad_logits = logits.sub_(log_sum_exp[:, None]).exp_()
                grad_logits[torch.arange(len(t), device=t.device), t] -= 1
                grad_logits = grad_logits.div_(count).to(grad_dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk_tokens] = (grad_logits @ weight_for_grad).to(grad_hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad_logits.T @ h.to(grad_dtype)).float()
                del logits, grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype, ctx.hidden_dtype = weight.dtype, hidden.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:  # scaled (by the fp16 loss scale too) before any cast to a narrow dtype
            grad_hidden = (grad_hidden * grad_loss.to(grad_hidden.dtype)).to(ctx.hidden_dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def _liger():
    """Liger's fused linear cross-entropy (CUDA, Triton) when the package is installed, else None."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean")

    def loss(hidden, weight, targets):
        # Liger computes in its inputs' dtype: give it the autocast dtype, as F.linear would get
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else hidden.dtype
        with torch.autocast("cuda", enabled=False):
            out = fused(weight.to(dtype), hidden.to(dtype), targets)
        return out[0] if isinstance(out, tuple) else out  # some releases also return the z-loss

    return loss


_liger_loss = _liger()
