"""Training batches that a resumed run can pick up exactly where the interrupted one stopped.

A run killed mid-epoch (SIGKILL, a SLURM requeue) must end with the same weights as one that was
never interrupted. That needs two things of the data order:

* each epoch's batches are a pure function of (seed, epoch), computed when the epoch's first batch is
  drawn, so a fresh process rebuilds the same order (a `torch.Generator` threaded through the epochs
  would not survive the restart);
* the position (epoch, batches the trainer has trained in it) is saved in every checkpoint, and on
  resume that many batches of the epoch are skipped, without being collated. The loader is stateful
  in Lightning's sense (`state_dict` / `load_state_dict`), but Lightning hands a loader its state only
  when the loader is built after the checkpoint is restored, and `trainer.estimated_stepping_batches`
  (the cosine schedule needs it in `configure_optimizers`) builds it before. So the data module also
  keeps the position as its own checkpointed state, restored before any loader exists, and passes it
  to the loader it builds (`InstructionDataModule.load_state_dict`). Both routes set the same value.

Under data parallelism every rank takes its own share of each epoch's batches (`rank::world_size`,
cut to equal length so all ranks step together), so no DistributedSampler is needed.
"""

from __future__ import annotations

import itertools
import random
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochBatches(Sampler[list[int]]):
    """Shuffled batches of indices; with `lengths`, batches of similar lengths (less padding): indices
    are shuffled, cut into groups of `group` batches, sorted by length inside each group, cut into
    batches, and the batches shuffled again."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        lengths: list[int] | None = None,
        group: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ):
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for {n} examples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.lengths, self.group = lengths, group
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over `epoch` starts after its first `batches_done` batches."""
        self._resume = (epoch, batches_done)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`, in training order."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(self.n))
        rng.shuffle(order)
        if self.lengths is None:
            batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        else:
            span = self.group * self.batch_size
            batches = []
            for start in range(0, self.n, span):
                chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
            rng.shuffle(batches)
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank :: self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: nothing is computed until the first batch is drawn, after Lightning has called
        # set_epoch and load_state_dict for the (possibly resumed) epoch.
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        yield from itertools.islice(self.epoch_batches(self.epoch), skip, None)

    def __len__(self) -> int:
        total = (self.n + self.batch_size - 1) // self.batch_size
        return total // self.world_size if self.world_size > 1 else total


class ResumableLoader(DataLoader):
    """A DataLoader over `EpochBatches` whose position Lightning saves in checkpoints and restores.

    `progress()` returns (epoch, batches trained in it) from the trainer; the loader's own count of
    batches drawn would run ahead of training whenever batches are prefetched. The epoch is also taken
    from it when a pass begins: Lightning calls `set_epoch` on samplers but not on batch samplers."""

    def __init__(self, dataset, batches: EpochBatches, collate_fn, progress: Callable[[], tuple[int, int]], **kwargs):
        # Every pass draws a seed for its workers from `generator`; from torch's global generator, that
        # draw would shift the dropout stream of a resumed run against an uninterrupted one.
        generator = torch.Generator().manual_seed(batches.seed)
        super().__init__(dataset, batch_sampler=batches, collate_fn=collate_fn, generator=generator, **kwargs)
        self.batches = batches
        self._progress = progress

    def __iter__(self):
        self.batches.set_epoch(self._progress()[0])
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._progress()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches.resume_at(state["epoch"], state["batches_done"])
