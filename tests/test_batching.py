"""The fast path stays exact: padding-free batches hold (almost) no padding and give the same loss as
the same examples padded."""

import pytest
import torch

from medinject.config import DataSettings
from conftest import compose_cfg
from medinject.train.datamodule import InstructionDataModule, collate_padded, collate_padding_free
from medinject.data.prepare import prepare_data
from medinject.model.load import attach_adapter, load_tokenizer_and_model


@pytest.fixture(scope="module")
def loaded():
    cfg = compose_cfg("data=native+synthetic+translated", "mix=natural", "data.cache=false", "trainer.batch_size=8")
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    model = attach_adapter(base, cfg.adapter, gradient_checkpointing=False)
    for name, p in model.named_parameters():  # make the adapters matter for the comparison
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return cfg, tokenizer, model.eval(), prepare_data(DataSettings.of(cfg))


def _pad_fraction(cfg, tokenizer, prepared, batching):
    cfg.data.batching = batching
    module = InstructionDataModule(cfg, tokenizer, prepared.examples, prepared.manifest["files"])
    module.setup("fit")
    real = total = 0
    for batch in module.train_dataloader():
        n = batch["input_ids"].numel()
        total += n
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else n
    return 1 - real / total, real


def test_padding_free_batches_of_the_sample_have_at_most_3_percent_padding(loaded):
    cfg, tokenizer, _, prepared = loaded
    free, free_tokens = _pad_fraction(cfg.copy(), tokenizer, prepared, "padding_free")
    padded, padded_tokens = _pad_fraction(cfg.copy(), tokenizer, prepared, "padded")
    assert free <= 0.03
    assert free_tokens == padded_tokens  # the same tokens, only the padding differs
    assert padded > free  # padded batching does pad, even grouped by length


def test_loss_and_logits_on_a_padding_free_batch_equal_the_padded_batch(loaded):
    cfg, tokenizer, model, prepared = loaded
    module = InstructionDataModule(cfg, tokenizer, prepared.examples[:6], prepared.manifest["files"])
    module.setup("fit")
    features = [module.train_set[i] for i in range(6)]
    free = collate_padding_free(features)
    padded = collate_padded(features, tokenizer.pad_token_id)
    # A padded batch lets each example's first token predict nothing across a boundary already;
    # mask the same position so both batches count exactly the same labels.
    padded["labels"][:, 0] = -100
    with torch.no_grad():
        out_free = model(**free, use_cache=False)
        out_padded = model(**padded, use_cache=False)
    torch.testing.assert_close(out_free.loss, out_padded.loss, rtol=1e-4, atol=1e-5)
    start = 0
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        torch.testing.assert_close(out_free.logits[0, start : start + n], out_padded.logits[i, :n], rtol=1e-3, atol=1e-4)
        start += n
