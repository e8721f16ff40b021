"""Selected examples -> chat template -> tokens (cached) -> batches with little or no padding.

Tokenized sets are Arrow datasets saved under `<cache_dir>/tokens/<key>` and memory-mapped back. The
key covers the selected examples' content ids, the source files' content hashes, the tokenizer
(its full serialization and chat template), the prompt config, max length, overflow policy and loss
masking, so an edited source file or another tokenizer never reuses a stale cache.

Batching: `padding_free` (default) concatenates a batch's examples into one row with positions
restarting at each example; the model must then run with `use_cache=False`, which is what makes
transformers treat the restarts as sequence boundaries. `padded` right-pads to the longest example
and, with `group_by_length`, draws batches of similar lengths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader

from medinject.config import Batching, Overlong, TrainSettings, to_container
from medinject.data.prompts import IGNORE_INDEX, answer_frame, prompt_text
from medinject.train.sampler import EpochBatches, ResumableLoader
from medinject.data.rows import Example
from medinject.util.errors import UserError

log = logging.getLogger(__name__)

TOKENS_VERSION = "tokens-v1"  # bump when tokenization changes
TOKEN_COUNTS = "token_counts"  # batch key: (non-pad, all) tokens, counted on the host before the batch moves


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    serialized = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.chat_template, tokenizer.eos_token, tokenizer.pad_token, type(tokenizer).__name__])
    return hashlib.sha256((serialized + extra).encode()).hexdigest()


def tokens_key(examples: list[Example], files: dict[str, str], tokenizer, cfg: TrainSettings) -> str:
    parts = [
        TOKENS_VERSION,
        [e.id for e in examples],
        files,
        tokenizer_fingerprint(tokenizer),
        to_container(cfg.prompt),
        cfg.data.max_length,
        cfg.data.overlong.value,
        cfg.data.completion_only_loss,
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def tokenize(examples: list[Example], tokenizer, cfg: TrainSettings) -> tuple[datasets.Dataset, dict]:
    """input_ids / labels per example (datasets.map, batched), over-long ones cut or dropped."""
    system, hints = cfg.prompt.system, dict(cfg.prompt.task_hints)
    max_length, completion_only = cfg.data.max_length, cfg.data.completion_only_loss
    drop_all_overlong = cfg.data.overlong == Overlong.drop
    before, after = answer_frame(tokenizer, system, hints)

    def encode_batch(batch: dict) -> dict:
        rows = [Example(**{k: batch[k][i] for k in batch} | {"options": tuple(batch["options"][i])}) for i in range(len(batch["id"]))]
        prompts = [prompt_text(tokenizer, ex, system, hints) for ex in rows]
        completions = [before + ex.answer + after for ex in rows]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
        out = {"input_ids": [], "labels": [], "keep": [], "truncated": []}
        for p, c in zip(prompt_ids, completion_ids):
            too_long = len(p) + len(c) > max_length
            out["keep"].append(len(p) < max_length and not (drop_all_overlong and too_long))
            out["truncated"].append(too_long)
            out["input_ids"].append((p + c)[:max_length])
            out["labels"].append(([IGNORE_INDEX] * len(p) if completion_only else list(p)) + c)
            out["labels"][-1] = out["labels"][-1][:max_length]
        return out

    rows = datasets.Dataset.from_list([dataclasses.asdict(ex) for ex in examples])
    encoded = rows.map(encode_batch, batched=True, batch_size=1000, remove_columns=rows.column_names, desc="tokenize")
    kept = encoded.filter(lambda keep: keep, input_columns="keep", batched=False)
    stats = {
        "examples": len(rows),
        "dropped_overlong": len(rows) - len(kept),
        "truncated": int(sum(t and k for t, k in zip(encoded["truncated"], encoded["keep"]))),
        "tokens": int(sum(len(ids) for ids in kept["input_ids"])),
    }
    if len(kept) == 0:
        raise UserError(f"data.max_length: {max_length} tokens leave no room for an answer in any training example")
    return kept.remove_columns(["keep", "truncated"]), stats


def tokenized_dataset(examples: list[Example], files: dict[str, str], tokenizer, cfg: TrainSettings) -> tuple[datasets.Dataset, dict, bool]:
    """(dataset, stats, cache hit). Written to the cache beside its final place, then renamed in."""
    if not cfg.data.cache:
        dataset, stats = tokenize(examples, tokenizer, cfg)
        return dataset, stats, False
    target = Path(cfg.paths.cache_dir) / "tokens" / tokens_key(examples, files, tokenizer, cfg)
    if (target / "stats.json").is_file():
        return datasets.load_from_disk(str(target / "dataset")), json.loads((target / "stats.json").read_text()), True
    dataset, stats = tokenize(examples, tokenizer, cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        dataset.save_to_disk(str(staging / "dataset"))
        (staging / "stats.json").write_text(json.dumps(stats))
        try:
            os.replace(staging, target)
        except OSError:  # another job finished the same key first: use theirs
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(str(target / "dataset")), stats, False


def collate_padded(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into one batch."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["labels"])
        attention[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def collate_padding_free(features: list[dict]) -> dict[str, torch.Tensor]:
    """One row holding every example back to back; positions restart at each example and no label
    crosses a boundary. No pad token at all."""
    input_ids = [t for f in features for t in f["input_ids"]]
    position_ids = [p for f in features for p in range(len(f["input_ids"]))]
    labels = []
    for f in features:
        labels.extend([IGNORE_INDEX] + list(f["labels"][1:]))  # the first token has no predecessor here
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "position_ids": torch.tensor([position_ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
    }


def token_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(non-pad, all) tokens of a batch; a padding-free batch has no padding and no mask."""
    total = batch["input_ids"].numel()
    mask = batch.get("attention_mask")
    return (int(mask.sum()) if mask is not None else total), total


class InstructionDataModule(L.LightningDataModule):
    def __init__(self, cfg: TrainSettings, tokenizer, examples: list[Example], files: dict[str, str]):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.examples = examples
        self.files = files
        self.train_set: datasets.Dataset | None = None
        self.stats: dict = {}
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.stats, hit = tokenized_dataset(self.examples, self.files, self.tokenizer, self.cfg)
        self.stats = {**self.stats, "cache_hit": hit, "batching": self.cfg.data.batching.value}
        log.info("tokenized %d examples (%d tokens)%s", len(self.train_set), self.stats["tokens"], ", from cache" if hit else "")

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Count the batch's tokens here, on the host, before it moves to the accelerator: the
        training step reads the count from the batch instead of summing a mask on the device (a host
        sync every step). A padding-free batch has no padding and no mask."""
        batch[TOKEN_COUNTS] = token_counts(batch)
        return batch

    def _collate(self):
        if self.cfg.data.batching == Batching.padding_free:
            return collate_padding_free
        pad_id = self.tokenizer.pad_token_id
        return lambda features: collate_padded(features, pad_id)

    def train_dataloader(self) -> DataLoader:
        lengths = None
        if self.cfg.data.batching == Batching.padded and self.cfg.data.group_by_length:
            lengths = [len(ids) for ids in self.train_set["input_ids"]]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        batches = EpochBatches(len(self.train_set), self.cfg.trainer.batch_size, self.cfg.seed, lengths, rank=rank, world_size=world)
        if self._resume_at is not None:
            batches.resume_at(*self._resume_at)
        return ResumableLoader(self.train_set, batches, self._collate(), progress=self._training_progress)

    def _training_progress(self) -> tuple[int, int]:
        """(epoch, batches trained in it) as the trainer counts them, for the loader's checkpointed state."""
        if self.trainer is None:  # iterated outside a Trainer
            return 0, 0
        fit_loop = self.trainer.fit_loop
        return fit_loop.epoch_progress.current.processed, fit_loop.epoch_loop.batch_progress.current.processed

    def state_dict(self) -> dict:
        """Saved in checkpoints: where in the data the training stands (`medinject.train.sampler.EpochBatches` continues from it)."""
        epoch, done = self._training_progress()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = (state["epoch"], state["batches_done"]) if state else None

    def probe_dataloader(self) -> DataLoader:
        """A fixed slice of the training set, in a fixed order, for before/after loss measurements."""
        n = min(len(self.train_set), self.cfg.trainer.probe_batches * self.cfg.trainer.batch_size)
        return DataLoader(self.train_set.select(range(n)), batch_size=self.cfg.trainer.batch_size, shuffle=False, collate_fn=self._collate())
