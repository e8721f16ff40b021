"""Batched greedy decoding with a KV cache: plain generation, and multiple-choice decoding that runs
greedy and letter-constrained rows of the same prompts in the same forward passes (one prefill)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from medinject.util.errors import UserError

SEPARATORS = (",", " ", ", ")


class AllowedTokens(LogitsProcessor):
    """Every token outside each row's allowed set gets -inf: the row can only produce those tokens.

    A small grammar keeps the answer readable by the letter rule: the first step allows only `first`
    (the option letters), so an answer is never empty, and a letter is always followed by a separator
    or the end, never by another letter ("AAAA" would be a run of letters the rule cannot read)."""

    def __init__(self, allowed: list[list[int]], first: list[list[int]]):
        self.first = [sorted(set(ids)) for ids in first]
        self.allowed = allowed
        self.after_letter = [sorted(set(a) - set(f)) for a, f in zip(allowed, first)]
        self.steps = 0

    def mask(self, last: list[int] | None, vocab_size: int, device) -> torch.Tensor:
        """(rows, vocab) booleans, True where a token is forbidden; `last`: each row's previous token,
        None at the first step."""
        mask = torch.ones(len(self.first), vocab_size, dtype=torch.bool, device=device)
        for row, first in enumerate(self.first):
            if last is None:
                ids = first
            elif last[row] in first:
                ids = self.after_letter[row]
            else:
                ids = self.allowed[row]
            mask[row, ids] = False
        return mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self.mask(None if self.steps == 0 else input_ids[:, -1].tolist(), scores.shape[-1], scores.device)
        self.steps += 1
        return scores.masked_fill(mask, float("-inf"))


def single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def option_token_ids(tokenizer, options: tuple[str, ...]) -> list[int]:
    ids = [single_token(tokenizer, letter) for letter in options]
    if None in ids:
        raise UserError(f"eval.constrained: option letter {options[ids.index(None)]!r} is not a single token of this tokenizer")
    return ids


def _encoded_batches(tokenizer, prompts: list[str], batch_size: int, device, desc: str):
    """(prompt indices, left-padded encoding) per batch; prompts of similar length batched together."""
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        batch = order[start : start + batch_size]
        yield batch, tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    desc: str,
    allowed: list[list[int]] | None = None,
    first: list[list[int]] | None = None,
) -> list[str] | tuple[list[str], list[list[float]]]:
    """Greedy generation in left-padded batches of similar length, outputs in the order of `prompts`.

    With `allowed` (token ids per prompt; `first` for the first step), decoding is constrained to
    them, and each prompt's raw first-step logits are returned as well."""
    outputs: list[str] = [""] * len(prompts)
    first_step: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    for batch, encoded in _encoded_batches(tokenizer, prompts, batch_size, device, desc):
        extra = {}
        if allowed is not None:
            extra = {
                "logits_processor": LogitsProcessorList([AllowedTokens([allowed[i] for i in batch], [first[i] for i in batch])]),
                "output_logits": True,
                "return_dict_in_generate": True,
            }
        generated = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
        sequences = generated.sequences if allowed is not None else generated
        texts = tokenizer.batch_decode(sequences[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        for row, (i, text) in enumerate(zip(batch, texts)):
            outputs[i] = text
            if allowed is not None:
                first_step[i] = generated.logits[0][row].float().tolist()
    return (outputs, first_step) if allowed is not None else outputs


@torch.no_grad()
def decode_choices(
    model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, allowed: list[list[int]], first: list[list[int]], desc: str
) -> tuple[list[str], list[str], list[list[float]]]:
    """Greedy and constrained decodings of every prompt from one shared prefill.

    Each batch's prompts are encoded once (the costly part: prompts are long, answers a few tokens);
    the KV cache is then duplicated so that row 2i continues greedily and row 2i+1 under the
    constraint, both in the same forward passes. Positions follow left padding the way
    `generate` computes them, so the outputs equal two separate `generate` calls (checked in tests).
    Returns (greedy texts, constrained texts, raw first-step logits), in the order of `prompts`."""
    greedy_out, constrained_out = [""] * len(prompts), [""] * len(prompts)
    first_logits: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for batch, encoded in _encoded_batches(tokenizer, prompts, batch_size, device, desc):
        attention = encoded["attention_mask"]
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
        out = model(input_ids=encoded["input_ids"], attention_mask=attention, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        for row, i in enumerate(batch):
            first_logits[i] = logits[row].tolist()
        cache.batch_repeat_interleave(2)
        attention = attention.repeat_interleave(2, dim=0)
        logits = logits.repeat_interleave(2, dim=0)
        constrained_rows = torch.arange(logits.shape[0], device=device) % 2 == 1
        grammar = AllowedTokens([allowed[i] for i in batch], [first[i] for i in batch])
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
        steps = []
        for step in range(max_new_tokens):
            mask = grammar.mask(steps[-1][constrained_rows].tolist() if steps else None, logits.shape[-1], device)
            scores = logits.clone()
            scores[constrained_rows] = scores[constrained_rows].masked_fill(mask, float("-inf"))
            chosen = scores.argmax(dim=-1).masked_fill(finished, pad)
            steps.append(chosen)
            finished |= chosen == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            out = model(
                input_ids=chosen[:, None], attention_mask=attention, position_ids=attention.sum(-1, keepdim=True) - 1,
                past_key_values=cache, use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1].float()
        texts = tokenizer.batch_decode(torch.stack(steps, dim=1), skip_special_tokens=True)
        for row, i in enumerate(batch):
            greedy_out[i], constrained_out[i] = texts[2 * row], texts[2 * row + 1]
    return greedy_out, constrained_out, first_logits
