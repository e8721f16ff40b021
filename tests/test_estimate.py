"""medinject.sweep.estimate: parameter counts against transformers/peft, 4-bit bytes against bitsandbytes,
and the shape of the memory estimate."""

from collections import Counter

import bitsandbytes as bnb
import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from conftest import compose_cfg
from medinject.config import AdapterConfig, AdapterMethod, ModelConfig, Quantization
from medinject.sweep.estimate import (
    PROJECTIONS,
    QWEN3_4B_INSTRUCT_2507,
    Architecture,
    adapter_parameters,
    architecture_for,
    base_weight_bytes,
    estimate_for_run,
    estimate_memory,
    qwen3_4b_instruct_2507,
)
from medinject.model.load import attach_adapter, load_tokenizer_and_model

GiB = 2**30
ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
    "attention_bias",
)
# Odd sizes on purpose: 4-bit blocks and nested blocks that do not divide the weights evenly.
SMALL = Architecture(
    vocab_size=300,
    hidden_size=72,
    intermediate_size=100,
    num_hidden_layers=2,
    num_attention_heads=3,
    num_key_value_heads=1,
    head_dim=20,
    tie_word_embeddings=False,
)


def qwen3_config(arch: Architecture) -> Qwen3Config:
    return Qwen3Config(**{k: getattr(arch, k) for k in ARCH_FIELDS})


def meta_model(arch: Architecture) -> Qwen3ForCausalLM:
    with torch.device("meta"):
        return Qwen3ForCausalLM(qwen3_config(arch))


def counts_by_module(model: torch.nn.Module) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():  # a tied lm_head is the embedding, listed once
        counts[name.split(".")[-2]] += param.numel()
    return dict(counts)


@pytest.fixture(scope="module")
def meta_4b() -> Qwen3ForCausalLM:
    return meta_model(QWEN3_4B_INSTRUCT_2507)


# (1) parameter counts


def test_qwen3_4b_shape_round_trips_through_a_transformers_config():
    assert qwen3_4b_instruct_2507() is QWEN3_4B_INSTRUCT_2507
    assert Architecture.from_config(qwen3_config(QWEN3_4B_INSTRUCT_2507)) == QWEN3_4B_INSTRUCT_2507


def test_parameter_counts_of_qwen3_4b_match_transformers_on_meta(meta_4b):
    counts = QWEN3_4B_INSTRUCT_2507.parameter_counts()
    expected = {name: n for name, n in counts.by_module.items() if n}  # tied: no lm_head of its own
    assert counts_by_module(meta_4b) == expected
    assert counts.total == sum(p.numel() for p in meta_4b.parameters()) == 4_022_468_096
    assert counts.embeddings == 151936 * 2560
    assert counts.non_embedding == 3_633_511_936  # the model card's "3.6B non-embedding"
    assert counts.lm_head == 0
    assert counts.attention + counts.mlp + counts.norms + counts.embeddings == counts.total


@pytest.mark.parametrize("attention_bias", [False, True])
def test_parameter_counts_of_an_untied_model_match_transformers(attention_bias):
    arch = Architecture(**{**SMALL.__dict__, "attention_bias": attention_bias})
    model = meta_model(arch)
    counts = arch.parameter_counts()
    assert counts_by_module(model) == counts.by_module
    assert counts.lm_head == arch.vocab_size * arch.hidden_size
    assert counts.total == sum(p.numel() for p in model.parameters())


# (2) adapter parameter counts


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("targets", [list(PROJECTIONS), ["q_proj", "v_proj", "down_proj"]])
def test_adapter_parameters_match_peft(method, targets):
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(qwen3_config(SMALL))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, use_dora=method == "dora"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == adapter_parameters(SMALL, method, 4, targets)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_parameters_of_qwen3_4b_match_peft_on_meta(method):
    """peft wraps a meta-device model (DoRA's weight norm stays on meta), so the 4B counts are exact."""
    peft_model = get_peft_model(meta_model(QWEN3_4B_INSTRUCT_2507), LoraConfig(r=16, target_modules=list(PROJECTIONS), use_dora=method == "dora"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == adapter_parameters(QWEN3_4B_INSTRUCT_2507, method, 16)
    assert trainable == {"lora": 33_030_144, "dora": 34_136_064}[method]


def test_all_linear_and_unknown_targets():
    assert adapter_parameters(SMALL, "lora", 8, "all-linear") == adapter_parameters(SMALL, "lora", 8, PROJECTIONS)
    with pytest.raises(ValueError, match="embed_tokens"):
        adapter_parameters(SMALL, "lora", 8, ["q_proj", "embed_tokens"])
    with_head = adapter_parameters(SMALL, "lora", 8, ["q_proj", "lm_head"])  # the output layer, as peft adapts it
    assert with_head == adapter_parameters(SMALL, "lora", 8, ["q_proj"]) + 8 * (SMALL.hidden_size + SMALL.vocab_size)


# (3) 4-bit weight bytes against bitsandbytes, loaded through medinject.model.load


def save_small_model(folder) -> None:
    """SMALL with random bf16 weights and a throwaway word-level tokenizer with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    Qwen3ForCausalLM(qwen3_config(SMALL)).to(torch.bfloat16).save_pretrained(folder)
    core = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "a": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(folder)


def base_bytes(model: torch.nn.Module) -> int:
    """Bytes of the base model's parameters (not the adapter's) plus the bitsandbytes quantization
    states of its 4-bit weights."""
    total = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "lora_" not in name)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            tensors = [state.absmax, state.code]
            if state.nested:
                tensors += [state.offset, state.state2.absmax, state.state2.code]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_base_weight_bytes_match_bitsandbytes(tmp_path, double_quant):
    save_small_model(tmp_path)
    model_cfg = OmegaConf.structured(ModelConfig(name="small", path=str(tmp_path), dtype="bfloat16"))
    adapter_cfg = OmegaConf.structured(
        AdapterConfig(name="qlora", method=AdapterMethod.lora, quantization=Quantization.nf4, double_quant=double_quant, compute_dtype="bfloat16", r=4)
    )
    _, model = load_tokenizer_and_model(model_cfg, adapter_cfg)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 7 * SMALL.num_hidden_layers
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # bitsandbytes leaves lm_head (and embeddings) alone
    assert base_bytes(model) == base_weight_bytes(SMALL, "nf4", double_quant, "bfloat16", upcast_unquantized=False)

    # attach_adapter runs peft's prepare_model_for_kbit_training: what is not 4-bit becomes fp32
    model = attach_adapter(model, adapter_cfg, gradient_checkpointing=False)
    assert model.get_base_model().model.embed_tokens.weight.dtype == torch.float32
    assert base_bytes(model) == base_weight_bytes(SMALL, "nf4", double_quant, "bfloat16", upcast_unquantized=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}
    assert sum(p.numel() for p in trainable) == adapter_parameters(SMALL, "lora", 4)


def test_4bit_weights_of_qwen3_4b_are_about_a_quarter_of_bf16():
    arch = QWEN3_4B_INSTRUCT_2507
    counts = arch.parameter_counts()
    nf4 = base_weight_bytes(arch, "nf4", True, "bfloat16", upcast_unquantized=False)
    # 4.127 bits per quantized value with double quantization (4 + 8/64 + 32/(64*256)), 16 for the rest,
    # and about 1 KiB of code books per 4-bit weight
    expected = counts.linear * (4 + 8 / 64 + 32 / 64 / 256) / 8 + (counts.total - counts.linear) * 2
    assert nf4 == pytest.approx(expected + 7 * 36 * 1092, rel=1e-6)
    assert base_weight_bytes(arch, "nf4", False, "bfloat16", False) > nf4  # fp32 absmax: 4.5 bits per value
    assert base_weight_bytes(arch, None, True, "bfloat16", False) == counts.total * 2


# (4) the memory estimate


def qwen3_4b(**kwargs):
    defaults = dict(r=16, micro_batch=12, seq_len=2048, compute_dtype="bfloat16")
    return estimate_memory(QWEN3_4B_INSTRUCT_2507, **{**defaults, **kwargs})


@pytest.mark.parametrize("method,quantization", [("lora", "nf4"), ("lora", None), ("dora", None), ("dora", "nf4")])
def test_gradient_checkpointing_lowers_the_activations(method, quantization):
    without = qwen3_4b(method=method, quantization=quantization, gradient_checkpointing=False)
    with_gc = qwen3_4b(method=method, quantization=quantization, gradient_checkpointing=True)
    assert with_gc.activations < without.activations / 10
    assert with_gc.recompute > 0 == without.recompute
    assert with_gc.total < without.total
    assert with_gc.static == without.static


def test_qlora_needs_less_than_bf16_lora():
    for gc in (True, False):
        qlora = qwen3_4b(method="lora", quantization="nf4", gradient_checkpointing=gc, micro_batch=1)
        lora = qwen3_4b(method="lora", quantization=None, gradient_checkpointing=gc, micro_batch=1)
        assert qlora.base_weights < lora.base_weights / 2
        assert qlora.static < lora.static
        # 4-bit weights alone: QLoRA needs less at every batch size
        plain = qwen3_4b(method="lora", quantization="nf4", gradient_checkpointing=gc, micro_batch=1, upcast_unquantized=False)
        assert plain.total < lora.total
    assert qwen3_4b(method="lora", quantization="nf4", micro_batch=1).total < qwen3_4b(method="lora", quantization=None, micro_batch=1).total


def test_kbit_upcast_makes_qlora_activations_fp32():
    """prepare_model_for_kbit_training's fp32 embeddings and norms put the residual stream and the MLP
    in fp32: once activations dominate, QLoRA as medinject sets it up needs more than bf16 LoRA (the
    H100 measured 25.86 vs 25.39 GiB without checkpointing at 1 x 2048 tokens, 54.90 vs 54.23 GiB with
    it at 12 x 2048)."""
    for gc, batch in ((False, 1), (True, 12)):
        qlora = qwen3_4b(method="lora", quantization="nf4", gradient_checkpointing=gc, micro_batch=batch)
        lora = qwen3_4b(method="lora", quantization=None, gradient_checkpointing=gc, micro_batch=batch)
        assert qlora.activations > lora.activations
        assert qlora.peak_allocated > lora.peak_allocated


def test_dora_adds_magnitudes_and_activations():
    for quantization in ("nf4", None):
        lora = qwen3_4b(method="lora", quantization=quantization, gradient_checkpointing=False)
        dora = qwen3_4b(method="dora", quantization=quantization, gradient_checkpointing=False)
        magnitudes = QWEN3_4B_INSTRUCT_2507.num_hidden_layers * sum(out for _, out in QWEN3_4B_INSTRUCT_2507.linear_shapes().values())
        assert dora.adapter_weights - lora.adapter_weights == 4 * magnitudes
        assert dora.adapter_weights > lora.adapter_weights
        assert dora.activations > lora.activations
        assert dora.weight_copies > lora.weight_copies  # DoRA keeps each projection's weight for backward


@pytest.mark.parametrize("gc", [True, False])
def test_activations_and_full_logits_scale_linearly_with_batch(gc):
    one, four = (qwen3_4b(method="dora", quantization="nf4", gradient_checkpointing=gc, micro_batch=b, loss="full_logits") for b in (1, 4))
    assert four.activations == 4 * one.activations
    assert four.logits == 4 * one.logits
    assert four.static == one.static and four.weight_copies == one.weight_copies


def test_the_full_logits_loss_dominates_at_151k_vocabulary():
    e = qwen3_4b(method="lora", quantization="nf4", gradient_checkpointing=True, loss="full_logits")
    assert e.logits == 12 * 12 * 2048 * 151936
    assert e.logits > e.activations + e.static


@pytest.mark.parametrize("gc", [True, False])
def test_the_chunked_loss_holds_one_chunk_of_logits_whatever_the_batch(gc):
    """medinject.train.loss: one chunk of about 2**26 logits (fp32 + bf16: 6 bytes each), the lm_head in
    the compute dtype where it is stored otherwise (QLoRA's fp32 upcast), and the labelled hidden states."""
    one, four = (qwen3_4b(method="lora", quantization="nf4", gradient_checkpointing=gc, micro_batch=b) for b in (1, 4))
    h, vocab = QWEN3_4B_INSTRUCT_2507.hidden_size, QWEN3_4B_INSTRUCT_2507.vocab_size
    chunk = (2**26 // vocab) * vocab
    assert one.logits == 6 * chunk + 2 * vocab * h + 4 * h * 2048  # fp32 residual stream under QLoRA
    assert four.logits - one.logits == 3 * 4 * h * 2048  # only the hidden states grow with the batch
    assert one.weight_copies == qwen3_4b(method="lora", quantization="nf4", gradient_checkpointing=gc, micro_batch=1, loss="full_logits").weight_copies - 2 * vocab * h
    bf16 = qwen3_4b(method="dora", quantization=None, gradient_checkpointing=gc, micro_batch=1)
    assert bf16.logits == 6 * chunk + 2 * h * 2048  # a bf16 lm_head is not copied
    with pytest.raises(ValueError, match="loss"):
        qwen3_4b(method="lora", loss="fused")


def test_the_paper_dora_run_fits_in_24_gib_with_the_chunked_loss():
    """experiment=paper: DoRA on a bf16 base, 12 x 2048 tokens, gradient checkpointing: 54.2 GiB with the
    full logits (measured on an H100), at most 24 GiB now; the checkpoint recomputation is the peak."""
    full = qwen3_4b(method="dora", quantization=None, gradient_checkpointing=True, loss="full_logits")
    chunked = qwen3_4b(method="dora", quantization=None, gradient_checkpointing=True)
    assert full.peak_allocated / GiB == pytest.approx(54.2, abs=0.1)
    assert chunked.peak_allocated / GiB <= 24
    assert chunked.logits < 1 * GiB < chunked.recompute
    assert full.peak_allocated - chunked.peak_allocated == full.logits - chunked.recompute - (chunked.activations - full.activations)


def test_estimate_matches_measured_h100_peaks():
    """torch.cuda.max_memory_allocated() of a random Qwen3-4B-shaped model, 2 AdamW steps of 2
    micro-batches each, bf16 autocast, SDPA, r=16 on the seven projections (one H100, torch 2.11,
    transformers 5.17, peft 0.21, bitsandbytes 0.50), when the training step took transformers' loss
    over the full logits. The last four were measured after the model was written, as a check."""
    measured = [  # method, quantization, checkpointing, micro-batch, seq, dropout, peak allocated GiB
        ("lora", "nf4", True, 12, 2048, 0.05, 54.90),
        ("lora", "nf4", False, 1, 2048, 0.05, 25.86),
        ("lora", None, True, 12, 2048, 0.05, 54.23),
        ("lora", None, False, 1, 2048, 0.05, 25.39),
        ("dora", None, True, 12, 2048, 0.05, 54.25),
        ("dora", None, False, 1, 2048, 0.05, 40.68),
        ("dora", "nf4", True, 4, 2048, 0.05, 21.32),
        ("lora", "nf4", False, 2, 1024, 0.05, 25.85),
        ("lora", None, True, 4, 4096, 0.05, 38.84),
        ("dora", "nf4", False, 1, 2048, 0.05, 41.12),
        ("dora", None, False, 1, 2048, 0.0, 32.02),
    ]
    for method, quantization, gc, batch, seq, dropout, gib in measured:
        e = qwen3_4b(
            method=method, quantization=quantization, gradient_checkpointing=gc, micro_batch=batch, seq_len=seq, lora_dropout=dropout,
            loss="full_logits",
        )
        assert e.peak_allocated / GiB == pytest.approx(gib, rel=0.02), (method, quantization, gc, batch, seq, dropout)


def test_rows_and_format():
    # the peak counts the larger of the loss and the recomputation: the full logits, or (chunked) the recomputation
    for loss, smaller in (("full_logits", "checkpoint recomputation (1 layer)"), ("chunked", "loss over the vocabulary")):
        e = qwen3_4b(method="lora", quantization="nf4", gradient_checkpointing=True, loss=loss)
        rows = dict(e.rows())
        assert rows["total"] == pytest.approx(e.total / GiB)
        assert sum(v for k, v in rows.items() if k not in ("peak allocated", "total", smaller)) == pytest.approx(e.total / GiB)
    text = e.format("Qwen3-4B QLoRA")
    assert text.startswith("Qwen3-4B QLoRA") and "GiB" in text and "loss over the vocabulary" in text


def test_estimate_for_a_composed_run_config():
    cfg = compose_cfg("model=qwen3_4b_instruct", "adapter=qdora", "trainer=gpu")
    assert architecture_for(cfg.model) == QWEN3_4B_INSTRUCT_2507
    e = estimate_for_run(cfg, seq_len=2048)
    assert e == qwen3_4b(
        method="dora", quantization="nf4", micro_batch=cfg.trainer.batch_size, gradient_checkpointing=cfg.trainer.gradient_checkpointing
    )
    tiny = compose_cfg("adapter=lora")
    assert architecture_for(tiny.model).hidden_size == tiny.model.build_tiny.hidden_size
    assert estimate_for_run(tiny).total > 0
