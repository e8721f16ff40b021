"""What the fast training path relies on, through the real model and training step (no timings).

test_batching.py checks the batches themselves (at most 3% padding, padding-free loss = padded loss
under transformers' own attention). Here: the training step moves a padding-free row to `sdpa_varlen`,
which attends within each example only (never over the whole row, no row x row mask) and gives the
same loss and gradients; everything else (padded batches, generation) is unchanged by the switch; the
token counts the data module passes with each batch (taken on the host, before the batch moves to the
accelerator) equal its attention mask, and the counters add up those of the batches actually trained.
"""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from medinject.config import DataSettings
from conftest import compose_cfg

from medinject.train.datamodule import (
    TOKEN_COUNTS,
    InstructionDataModule,
    collate_padded,
    collate_padding_free,
)
from medinject.data.prepare import prepare_data
from medinject.model.attention import NAME, use_varlen_attention
from medinject.train.lit import AdapterFineTuning
from medinject.model.load import attach_adapter, load_tokenizer_and_model

OVERRIDES = ("data=native+synthetic+translated", "mix=natural", "data.cache=false", "adapter.dropout=0.0")


def _model(cfg):
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    model = attach_adapter(base, cfg.adapter, gradient_checkpointing=False)
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # non-zero B matrices: the adapters take part
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return tokenizer, model


@pytest.fixture(scope="module")
def setup():
    cfg = compose_cfg(*OVERRIDES)
    tokenizer, model = _model(cfg)
    prepared = prepare_data(DataSettings.of(cfg))
    module = InstructionDataModule(cfg, tokenizer, prepared.examples, prepared.manifest["files"])
    module.setup("fit")
    # examples of different lengths, so a whole-row attention would differ from a per-example one
    features = [module.train_set[i] for i in range(0, 60, 8)]
    assert len({len(f["input_ids"]) for f in features}) > 1
    return cfg, tokenizer, model, prepared, features


def _on(model, batch):
    """The batch on the model's device (bitsandbytes puts a 4-bit model on the GPU where there is one)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


def _sdpa_calls(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, *args, **kwargs):
        calls.append((query.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return real(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_training_step_attends_within_each_example_with_the_same_loss_and_gradients(setup, monkeypatch):
    cfg, tokenizer, model, _, features = setup
    model.get_base_model().set_attn_implementation("sdpa")
    free = _on(model, collate_padding_free(features))
    padded = _on(model, collate_padded(features, tokenizer.pad_token_id))
    padded["labels"][:, 0] = -100  # the first token of each example predicts nothing in either batch
    model.train()
    ref_loss, ref_logits, ref_grads = _loss_and_grads(model, free)  # transformers' sdpa, block-diagonal mask
    pad_loss, _, pad_grads = _loss_and_grads(model, padded)

    module = AdapterFineTuning(model, cfg.optim)
    calls = _sdpa_calls(monkeypatch)
    model.zero_grad(set_to_none=True)
    loss = module.training_step(free, 0)  # not attached to a Trainer: self.log only warns
    loss.backward()
    assert model.config._attn_implementation == NAME

    lengths = [len(f["input_ids"]) for f in features]
    layers = model.config.num_hidden_layers
    assert len(calls) == layers * len(features)  # one causal attention per example and layer
    assert max(q for q, _ in calls) == max(lengths)  # never the whole row
    assert all(mask is None for _, mask in calls)  # and no (row x row) mask

    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.detach(), pad_loss, rtol=1e-4, atol=1e-5)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(grads[name], pad_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    with torch.no_grad():
        logits = model(**free, use_cache=False).logits
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)


def test_the_switch_leaves_padded_batches_and_generation_as_they_were(setup):
    _, tokenizer, model, _, features = setup
    padded = _on(model, collate_padded(features[:4], tokenizer.pad_token_id))
    prompts = ["Bonjour", "Quel est le traitement de première intention de la crise d'asthme ?"]
    tokenizer.padding_side = "left"
    enc = _on(model, tokenizer(prompts, return_tensors="pt", padding=True))
    model.eval()
    results = {}
    for implementation in ("sdpa", NAME):
        model.get_base_model().set_attn_implementation(implementation)
        with torch.no_grad():
            results[implementation] = (
                model(**padded, use_cache=False).logits,
                model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id),
            )
    torch.testing.assert_close(results[NAME][0], results["sdpa"][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(results[NAME][1], results["sdpa"][1])


def test_only_sdpa_models_are_switched(setup):
    _, _, model, _, _ = setup
    base = model.get_base_model()
    base.set_attn_implementation("eager")
    assert not use_varlen_attention(model) and base.config._attn_implementation == "eager"
    base.set_attn_implementation("sdpa")
    assert use_varlen_attention(model) and use_varlen_attention(model)  # idempotent
    assert base.config._attn_implementation == NAME


class _MaskCounts(L.Callback):
    """The reference: non-pad and all tokens of each batch the trainer runs, read off the batch, and
    the counts the data module passed along with it."""

    def __init__(self):
        self.real = self.total = 0
        self.passed = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        self.real += real
        self.total += batch["input_ids"].numel()
        self.passed.append((batch.get(TOKEN_COUNTS), (real, batch["input_ids"].numel())))


@pytest.mark.parametrize("batching", ["padded", "padding_free"])
def test_token_counters_equal_the_attention_masks_of_the_batches_trained(batching, tmp_path):
    cfg = compose_cfg(*OVERRIDES, f"data.batching={batching}", "trainer.batch_size=6", "trainer.accumulate_grad_batches=2")
    tokenizer, model = _model(cfg)
    prepared = prepare_data(DataSettings.of(cfg))
    datamodule = InstructionDataModule(cfg, tokenizer, prepared.examples, prepared.manifest["files"])
    module = AdapterFineTuning(model, cfg.optim)
    reference = _MaskCounts()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[reference],
    )
    trainer.fit(module, datamodule=datamodule)
    assert reference.total > 0 and len(reference.passed) == 3 * 2
    assert all(passed == counted for passed, counted in reference.passed)  # counted on the host = the masks
    assert (module.tokens_seen, module.pad_seen) == (reference.real, reference.total - reference.real)
    if batching == "padded":
        assert module.pad_seen > 0
    else:
        assert module.pad_seen == 0 and model.config._attn_implementation == NAME
