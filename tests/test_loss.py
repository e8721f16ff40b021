"""The training loss without the full logits (medinject.train.loss) equals transformers' own loss.

Reference: `model(**batch).loss`, the full logits upcast to fp32 and cross-entropy over the labelled
positions. The new path must give the same value and the same gradients on padded and padding-free
batches, with the completion-only loss and with the loss over whole sequences, in chunks smaller than
the batch; it must compute the output projection only at labelled positions.
"""

import pytest
import torch
import torch.nn.functional as F
from medinject.config import DataSettings
from conftest import compose_cfg
from test_fast_path import OVERRIDES, _model

from medinject.data.prepare import prepare_data
from medinject.train.datamodule import InstructionDataModule, collate_padded, collate_padding_free
from medinject.train.lit import AdapterFineTuning
from medinject.train.loss import causal_lm_loss, linear_cross_entropy


@pytest.fixture(scope="module")
def setup():
    cfg = compose_cfg(*OVERRIDES)
    tokenizer, model = _model(cfg)  # the adapter with non-zero B matrices, as in test_fast_path
    prepared = prepare_data(DataSettings.of(cfg))
    module = InstructionDataModule(cfg, tokenizer, prepared.examples, prepared.manifest["files"])
    module.setup("fit")
    completion_only = [module.train_set[i] for i in range(0, 48, 8)]
    assert any(-100 in f["labels"] for f in completion_only)  # the prompt is masked
    whole = [{**f, "labels": list(f["input_ids"])} for f in completion_only]
    return cfg, tokenizer, model, {"completion": completion_only, "all": whole}


def _batch(model, features, batching, pad_id):
    batch = collate_padding_free(features) if batching == "padding_free" else collate_padded(features, pad_id)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("batching", ["padded", "padding_free"])
@pytest.mark.parametrize("objective", ["completion", "all"])
def test_loss_and_gradients_equal_transformers_loss(setup, batching, objective):
    _, tokenizer, model, features = setup
    batch = _batch(model, features[objective], batching, tokenizer.pad_token_id)
    model.train()
    ref_loss, ref_grads = _loss_and_grads(model, lambda: model(**batch, use_cache=False).loss)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    loss, grads = _loss_and_grads(model, lambda: causal_lm_loss(model, batch, chunk_tokens=labelled // 3))  # 4 chunks
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_training_step_and_probe_loss_use_the_new_path(setup):
    cfg, tokenizer, model, features = setup
    batch = _batch(model, features["completion"], "padded", tokenizer.pad_token_id)
    module = AdapterFineTuning(model, cfg.optim)
    model.train()
    ref_loss, ref_grads = _loss_and_grads(model, lambda: model(**batch, use_cache=False).loss)
    loss, grads = _loss_and_grads(model, lambda: module.training_step(dict(batch), 0))  # no Trainer: self.log warns
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    probe = module.mean_loss([{k: v.cpu() for k, v in batch.items()}])
    assert model.training  # put back in training mode
    model.eval()
    with torch.no_grad():
        assert probe == pytest.approx(float(model(**batch, use_cache=False).loss), rel=1e-5)


def test_the_output_projection_runs_only_at_labelled_positions_in_chunks(setup, monkeypatch):
    _, tokenizer, model, features = setup
    batch = _batch(model, features["completion"], "padded", tokenizer.pad_token_id)
    head = model.get_base_model().get_output_embeddings().weight
    rows = []
    real = F.linear

    def spy(input, weight, *args, **kwargs):
        if weight is head:
            rows.append(input.shape[:-1])
        return real(input, weight, *args, **kwargs)

    monkeypatch.setattr(F, "linear", spy)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert labelled < batch["input_ids"].numel() // 2  # the prompts are most of the batch
    with torch.no_grad():
        causal_lm_loss(model, batch, chunk_tokens=64)
    assert sum(r.numel() for r in rows) == labelled  # logits at the labelled positions only
    assert all(len(r) == 1 and r[0] <= 64 for r in rows) and len(rows) == -(-labelled // 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_trained_output_projection_gets_the_same_gradient_under_autocast(dtype):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref = F.cross_entropy(F.linear(hidden, weight).float(), targets)
        ref_grads = torch.autograd.grad(2 * ref, (hidden, weight))
        loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=10)
        grads = torch.autograd.grad(2 * loss, (hidden, weight))  # an upstream scale reaches both gradients
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}
    torch.testing.assert_close(loss, ref, **tol)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA loss path (Liger's fused kernel when installed) needs a CUDA device")
def test_cuda_loss_equals_the_full_logits_loss_under_bf16_autocast():
    torch.manual_seed(0)
    hidden = torch.randn(3000, 256, device="cuda", requires_grad=True)
    weight = torch.randn(32000, 256, device="cuda", requires_grad=False) / 16
    targets = torch.randint(0, 32000, (3000,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(hidden, weight).float(), targets)
        (ref_grad,) = torch.autograd.grad(ref, hidden)
        loss = linear_cross_entropy(hidden, weight, targets)
        (grad,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(grad, ref_grad, rtol=5e-2, atol=1e-5)


def test_an_adapter_on_lm_head_is_trained_and_its_loss_equals_transformers(setup):
    """`lm_head` in adapter.target_modules: the loss runs the adapted head itself, so its LoRA weights get
    their gradient (reading `head.weight` would skip the adapter and leave it untrained)."""
    from medinject.model.load import attach_adapter, load_tokenizer_and_model

    cfg = compose_cfg(*OVERRIDES, "adapter.target_modules=[q_proj,v_proj,lm_head]")
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    model = attach_adapter(base, cfg.adapter, gradient_checkpointing=False)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    batch = _batch(model, setup[3]["completion"], "padded", tokenizer.pad_token_id)
    model.train()
    ref_loss, ref_grads = _loss_and_grads(model, lambda: model(**batch, use_cache=False).loss)
    loss, grads = _loss_and_grads(model, lambda: causal_lm_loss(model, batch, chunk_tokens=7))
    head = [n for n in ref_grads if "lm_head" in n]
    assert head and set(head) <= grads.keys()
    assert all(grads[n].abs().sum() > 0 for n in head)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_fp16_autocast_gradients_do_not_underflow():
    """Under 16-mixed the per-logit gradient (softmax - one-hot) / N is far below fp16's smallest
    number for a large N; built in fp16 it is mostly 0. The gradient must match an fp32 reference."""
    torch.manual_seed(0)
    n, hidden_size, vocab = 8192, 16, 4096
    hidden = torch.randn(n, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size) * 0.1
    targets = torch.randint(vocab, (n,))
    rounded = hidden.detach().half().float().requires_grad_()  # the values fp16 autocast computes with, in fp32
    reference = torch.autograd.grad(F.cross_entropy(F.linear(rounded, weight.half().float()), targets), rounded)[0]
    per_logit = torch.softmax(F.linear(rounded, weight.half().float()), dim=-1) / n  # the premise: in fp16 most of it is 0
    assert (per_logit.half() == 0).float().mean() > 0.5
    with torch.autocast("cpu", dtype=torch.float16):
        loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=1024)
    (grad,) = torch.autograd.grad(loss * 65536.0, hidden)  # a loss scale, as 16-mixed's GradScaler applies
    grad = grad / 65536.0
    assert grad.dtype == hidden.dtype
    torch.testing.assert_close(grad, reference, rtol=2e-2, atol=1e-9)
