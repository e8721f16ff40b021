"""The data stage of a run: sources -> validated rows -> mix -> chat template -> tokens -> batches."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict

import datasets
import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medinject.data.mix import select
from medinject.data.prompts import IGNORE_INDEX, encode
from medinject.data.rows import Example, load_rows
from medinject.errors import UserError

log = logging.getLogger(__name__)


def load_training_examples(cfg: DictConfig) -> list[Example]:
    """Read every source of the provenance config and apply the mix strategy."""
    rows_by_source = {
        name: load_rows(list(src.train), key=f"data.sources.{name}.train", expected_origin=src.origin.value)
        for name, src in cfg.data.sources.items()
    }
    for name, rows in rows_by_source.items():
        log.info("source %s: %d training rows", name, len(rows))
    return select(rows_by_source, cfg.mix.strategy, cfg.mix.budget, cfg.seed)


def counts(examples: list[Example]) -> dict[str, dict[str, int]]:
    """counts[origin][type] of the selected examples."""
    table: dict[str, Counter] = {}
    for ex in examples:
        table.setdefault(ex.origin, Counter())[ex.type] += 1
    return {origin: dict(sorted(c.items())) for origin, c in sorted(table.items())}


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
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


class InstructionDataModule(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, tokenizer, examples: list[Example]):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.examples = examples
        self.train_set: datasets.Dataset | None = None
        self.stats: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        system, hints = self.cfg.prompt.system, dict(self.cfg.prompt.task_hints)
        max_length, completion_only = self.cfg.data.max_length, self.cfg.data.completion_only_loss
        rows = datasets.Dataset.from_list([asdict(ex) for ex in self.examples])

        def tokenize(row: dict) -> dict:
            return encode(self.tokenizer, Example(**{**row, "options": tuple(row["options"])}), system, hints, max_length, completion_only)

        encoded = rows.map(tokenize, remove_columns=rows.column_names, desc="tokenize")
        kept = encoded.filter(lambda row: row["keep"])
        self.stats = {
            "examples": len(rows),
            "dropped_prompt_too_long": len(rows) - len(kept),
            "truncated": int(sum(kept["truncated"])),
            "tokens": int(sum(len(ids) for ids in kept["input_ids"])),
        }
        if len(kept) == 0:
            raise UserError(f"data.max_length: {max_length} tokens leave no room for an answer in any training example")
        self.train_set = kept.remove_columns(["keep", "truncated"])
        log.info("tokenized %d examples (%d tokens)", len(kept), self.stats["tokens"])

    def _loader(self, dataset: datasets.Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(
            dataset,
            batch_size=self.cfg.trainer.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=lambda features: collate(features, self.tokenizer.pad_token_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def probe_dataloader(self) -> DataLoader:
        """A fixed slice of the training set, in a fixed order, for before/after loss measurements."""
        n = min(len(self.train_set), self.cfg.trainer.probe_batches * self.cfg.trainer.batch_size)
        return self._loader(self.train_set.select(range(n)), shuffle=False)
