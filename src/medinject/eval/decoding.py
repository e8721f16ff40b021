"""Batched greedy decoding with a KV cache in transformers: plain generation, and multiple-choice
decoding that runs greedy and letter-constrained rows of the same prompts in the same forward passes
(one prefill); `AllowedTokens`, the constraint every backend applies. What a constraint holds and how
many new tokens an answer gets are the protocol's (`medinject.eval.protocol`); the engine over these
functions is `medinject.eval.hf_backend`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from medinject.eval.engine import per_prompt
from medinject.util.errors import UserError
from medinject.util.lock import raise_if_interrupted

def single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def last_token(tokenizer, text: str) -> int:
    return tokenizer(text, add_special_tokens=False)["input_ids"][-1]


def option_token_ids(tokenizer, options: tuple[str, ...]) -> list[int]:
    """The token of each option letter written alone ("A"): where its first-step probability is read."""
    ids = [single_token(tokenizer, letter) for letter in options]
    if None in ids:
        raise UserError(f"eval.constrained: option letter {options[ids.index(None)]!r} is not a single token of this tokenizer")
    return ids


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """The tokens every backend stops generating on: the tokenizer's EOS and the `eos_token_id` of the
    model's generation config (Qwen3 instruct models list <|im_end|> and <|endoftext|> there), the set
    vLLM stops on by itself. `model`: a loaded model, or the folder a vLLM engine loads."""
    if model is None or isinstance(model, (str, Path)):
        from transformers import GenerationConfig

        try:
            config = GenerationConfig.from_pretrained(str(model)) if model is not None else None
        except OSError:  # no generation_config.json there
            config = None
    else:
        config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    extra = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted({tokenizer.eos_token_id, *extra})


class AllowedTokens(LogitsProcessor):
    """Every token outside each row's allowed set gets -inf: the row can only produce those tokens.

    With `first` (the lenient protocol's) a small grammar keeps the answer readable by the letter
    rule: the first step allows only `first` (the option letters), so an answer is never empty, and a
    letter is always followed by a separator or the end, never by another letter. Without it (the
    strict protocol) every step allows the same set."""

    def __init__(self, allowed: list[list[int]], first: list[list[int]] | None = None):
        self.allowed = [sorted(set(ids)) for ids in allowed]
        self.first = [sorted(set(ids)) for ids in first] if first is not None else None
        self.after_letter = [sorted(set(a) - set(f)) for a, f in zip(self.allowed, self.first)] if first is not None else None
        self.steps = 0

    def rows(self, indices: list[int]) -> "AllowedTokens":
        """The same constraint for a subset of the rows, in the order of `indices` (one batch)."""
        return AllowedTokens([self.allowed[i] for i in indices], [self.first[i] for i in indices] if self.first is not None else None)

    def mask(self, last: list[int] | None, vocab_size: int, device) -> torch.Tensor:
        """(rows, vocab) booleans, True where a token is forbidden; `last`: each row's previous token,
        None at the first step."""
        mask = torch.ones(len(self.allowed), vocab_size, dtype=torch.bool, device=device)
        for row, allowed in enumerate(self.allowed):
            if self.first is None:
                ids = allowed
            elif last is None:
                ids = self.first[row]
            elif last[row] in self.first[row]:
                ids = self.after_letter[row]
            else:
                ids = allowed
            mask[row, ids] = False
        return mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self.mask(None if self.steps == 0 else input_ids[:, -1].tolist(), scores.shape[-1], scores.device)
        self.steps += 1
        return scores.masked_fill(mask, float("-inf"))


def _encoded_batches(tokenizer, prompts: list[str], batch_size: int, device, desc: str):
    """(prompt indices, left-padded encoding) per batch; prompts of similar length batched together."""
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        raise_if_interrupted()  # a SIGTERM whose exception a finaliser swallowed still ends the run here
        batch = order[start : start + batch_size]
        yield batch, tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int | list[int],
    desc: str,
    constraint: AllowedTokens | None = None,
    letters: list[list[int]] | None = None,
) -> list[str] | tuple[list[str], list[dict[int, float]]]:
    """Greedy generation in left-padded batches of similar length, outputs in the order of `prompts`,
    stopping on `stop_token_ids`.

    `max_new_tokens`: one limit for all, or one per prompt (a batch runs to its longest limit and
    each row is cut at its own: greedy rows do not depend on each other). With `constraint`,
    decoding is constrained by it and each prompt's raw first-step logits of its `letters` tokens are
    returned as well ({token id: logit}; never the whole vocabulary). The text is decoded from the
    generated tokens only, never from the prompt."""
    limits = per_prompt(max_new_tokens, len(prompts))
    outputs: list[str] = [""] * len(prompts)
    first_step: list[dict[int, float]] = [{} for _ in prompts]
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    for batch, encoded in _encoded_batches(tokenizer, prompts, batch_size, device, desc):
        extra = {}
        if constraint is not None:
            extra = {
                "logits_processor": LogitsProcessorList([constraint.rows(batch)]),
                "output_logits": True,
                "return_dict_in_generate": True,
            }
        generated = model.generate(
            **encoded,
            max_new_tokens=max(limits[i] for i in batch),
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stops,
            **extra,
        )
        sequences = generated.sequences if constraint is not None else generated
        new = sequences[:, encoded["input_ids"].shape[1] :].tolist()
        texts = tokenizer.batch_decode([new[row][: limits[i]] for row, i in enumerate(batch)], skip_special_tokens=True)
        for row, (i, text) in enumerate(zip(batch, texts)):
            outputs[i] = text
            if constraint is not None:
                first_step[i] = _letter_logits(generated.logits[0][row], letters[i])
    return (outputs, first_step) if constraint is not None else outputs


def _letter_logits(logits: torch.Tensor, letters: list[int]) -> dict[int, float]:
    """{token id: logit} of the option letters in one row of first-step logits."""
    return dict(zip(letters, logits[letters].float().tolist()))


@torch.no_grad()
def decode_choices(
    model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int | list[int], constraint: AllowedTokens,
    letters: list[list[int]], desc: str,
) -> tuple[list[str], list[str], list[dict[int, float]]]:
    """Greedy and constrained decodings of every prompt from one shared prefill.

    Each batch's prompts are encoded once (the costly part: prompts are long, answers a few tokens);
    the KV cache is then duplicated so that row 2i continues greedily and row 2i+1 under the
    constraint, both in the same forward passes. Positions follow left padding the way
    `generate` computes them, so the outputs equal two separate `generate` calls (checked in tests).
    A row stops at a `stop_token_ids` token or at its own limit (`max_new_tokens`, one for all or one
    per prompt). Returns (greedy texts, constrained texts, raw first-step logits of each prompt's
    `letters` as {token id: logit}), in the order of `prompts`."""
    limits = per_prompt(max_new_tokens, len(prompts))
    greedy_out, constrained_out = [""] * len(prompts), [""] * len(prompts)
    first_logits: list[dict[int, float]] = [{} for _ in prompts]
    device = next(model.parameters()).device
    stops, pad = torch.tensor(stop_token_ids(tokenizer, model), device=device), tokenizer.pad_token_id
    for batch, encoded in _encoded_batches(tokenizer, prompts, batch_size, device, desc):
        attention = encoded["attention_mask"]
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
        out = model(input_ids=encoded["input_ids"], attention_mask=attention, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        for row, i in enumerate(batch):
            first_logits[i] = _letter_logits(logits[row], letters[i])
        cache.batch_repeat_interleave(2)
        attention = attention.repeat_interleave(2, dim=0)
        logits = logits.repeat_interleave(2, dim=0)
        row_limits = torch.tensor([limits[i] for i in batch], device=device).repeat_interleave(2)
        constrained_rows = torch.arange(logits.shape[0], device=device) % 2 == 1
        grammar = constraint.rows(batch)
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
        steps = []
        for step in range(int(row_limits.max())):
            mask = grammar.mask(steps[-1][constrained_rows].tolist() if steps else None, logits.shape[-1], device)
            scores = logits.clone()
            scores[constrained_rows] = scores[constrained_rows].masked_fill(mask, float("-inf"))
            chosen = scores.argmax(dim=-1).masked_fill(finished, pad)
            steps.append(chosen)
            finished |= torch.isin(chosen, stops) | (row_limits <= step + 1)
            if bool(finished.all()):
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
