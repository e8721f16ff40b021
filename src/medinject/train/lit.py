"""The training step, top to bottom: forward, loss over the labelled positions, log, AdamW, cosine
schedule with warmup.

The loss is `medinject.train.loss.causal_lm_loss`: the decoder's hidden states, then the output
projection and cross-entropy only at the positions that carry a label, in chunks, so the logits over
the whole vocabulary are never held for the whole batch (transformers' `model(**batch).loss` would).

Gradient accumulation and clipping are the Trainer's (`trainer.accumulate_grad_batches`,
`trainer.gradient_clip_val`). Checkpoints hold only the trainable (adapter) weights: the frozen base
is reloaded from `model.path`, so a checkpoint of a 4B model stays a few tens of MB.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from omegaconf import DictConfig
from transformers import get_cosine_schedule_with_warmup

from medinject.train.datamodule import TOKEN_COUNTS, token_counts
from medinject.train.loss import causal_lm_loss
from medinject.model.attention import use_varlen_attention


class AdapterFineTuning(L.LightningModule):
    def __init__(self, model, optim_cfg: DictConfig):
        super().__init__()
        self.model = model
        self.optim_cfg = optim_cfg
        self.strict_loading = False  # checkpoints carry the adapter weights only
        self.tokens_seen = 0  # non-pad tokens
        self.pad_seen = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # (non-pad, all) tokens, counted on the host by the data module before the batch moved to the
        # accelerator; counting them off the device here would make the host wait for the GPU every step.
        real, total = batch.pop(TOKEN_COUNTS, None) or token_counts(batch)  # counted here: a host sync on a GPU
        if "attention_mask" not in batch and "position_ids" in batch:
            # A padding-free row: attend within each example, not over the whole row (sdpa_varlen).
            use_varlen_attention(self.model)
        # causal_lm_loss runs the decoder with use_cache=False, which is required: with it on,
        # transformers ignores the position restarts of a padding-free batch and its examples attend
        # to each other.
        loss = causal_lm_loss(self.model, batch)
        self.tokens_seen += real
        self.pad_seen += total - real
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
        self.log("train/tokens", float(self.tokens_seen), on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/pad_fraction", self.pad_fraction, on_step=False, on_epoch=True)

    @property
    def pad_fraction(self) -> float:
        return self.pad_seen / max(self.tokens_seen + self.pad_seen, 1)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.optim_cfg.lr, betas=tuple(self.optim_cfg.betas), weight_decay=self.optim_cfg.weight_decay
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = math.ceil(self.optim_cfg.warmup_ratio * total)
        scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["pad_seen"] = self.pad_seen
        # Adapter dropout draws from torch's generators: a resumed run continues their streams, so
        # it makes the same updates as a run that was never interrupted.
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.pad_seen = checkpoint.get("pad_seen", 0)
        rng = checkpoint.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    @torch.no_grad()
    def mean_loss(self, loader) -> float:
        """Token-weighted mean loss over a loader, in eval mode (no dropout)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(causal_lm_loss(self.model, batch)) * n
            count += n
        self.model.train(was_training)
        return total / max(count, 1)
