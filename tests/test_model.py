"""The model stage: the tiny Qwen3 built offline and loaded like a hub model, real 4-bit QLoRA layers
(bitsandbytes on the CPU) where only the adapter trains, LoRA and DoRA shapes, the probe loss leaving
gradients intact, and an unreadable model path as one clear error."""

import bitsandbytes as bnb
import pytest
import torch
from transformers import Qwen3ForCausalLM

from conftest import compose_cfg
from medinject.util.errors import UserError
from medinject.train.lit import AdapterFineTuning
from medinject.model.load import attach_adapter, load_tokenizer_and_model, parameter_counts

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _load(*overrides):
    cfg = compose_cfg(*overrides)
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    return cfg, tokenizer, attach_adapter(base, cfg.adapter, gradient_checkpointing=False)


def _targeted_layers(model):
    return [(name, module) for name, module in model.named_modules() if name.endswith(TARGETS) and hasattr(module, "base_layer")]


def test_tiny_model_is_built_offline_and_loads_like_a_hub_model():
    cfg, tokenizer, model = _load("adapter=lora")
    assert isinstance(model.get_base_model(), Qwen3ForCausalLM)
    assert (cfg.model.path + "/config.json") and tokenizer.chat_template
    assert tokenizer.model_max_length == cfg.model.model_max_length
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Bonjour"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nBonjour<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenizer("Néphropathie à IgA")["input_ids"]) == "Néphropathie à IgA"


def test_qlora_base_linears_are_4bit_and_only_adapter_weights_train():
    _, _, model = _load("adapter=qlora")
    layers = _targeted_layers(model)
    assert len(layers) == 7 * 2  # seven projections in each of the two tiny layers
    for name, module in layers:
        assert isinstance(module.base_layer, bnb.nn.Linear4bit), name
        assert module.base_layer.weight.quant_state.quant_type == "nf4"
        assert module.base_layer.weight.quant_state.nested  # double quantization
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    n_trainable, n_total = parameter_counts(model)
    assert 0 < n_trainable < n_total


def test_lora_keeps_full_precision_weights_and_dora_adds_magnitudes():
    _, _, lora = _load("adapter=lora")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in lora.modules())
    _, _, dora = _load("adapter=qdora")
    names = [name for name, p in dora.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in dora.modules())


def _lora_grads(model, batch):
    model.zero_grad()
    model(**batch, use_cache=False).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_measuring_loss_in_eval_mode_leaves_4bit_gradients_intact():
    """The probe loss runs 4-bit layers in eval mode without grad before training; gradients after it
    must be those of a model that never did (bitsandbytes would otherwise switch kernels silently)."""
    cfg, tokenizer, model = _load("adapter=qlora", "adapter.dropout=0.0")
    for name, p in model.named_parameters():  # non-zero B matrices so gradients reach the lower layers
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.tensor([tokenizer("Quel est le traitement de la crise d'asthme ?")["input_ids"]])
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    before = _lora_grads(model, batch)
    module = AdapterFineTuning(model, cfg.optim)
    module.mean_loss([batch])
    after = _lora_grads(model, batch)
    lowest = [n for n in before if "layers.0.self_attn.q_proj.lora_A" in n]
    assert lowest and before[lowest[0]].abs().sum() > 0
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)


def test_unreadable_model_path_is_one_clear_error(tmp_path):
    cfg = compose_cfg("model=qwen3_4b_instruct", f"model.path={tmp_path}/nowhere")
    with pytest.raises(UserError, match=r"^model.path: .*nowhere is not a model folder"):
        load_tokenizer_and_model(cfg.model, cfg.adapter)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    cfg = compose_cfg("model=qwen3_4b_instruct", f"model.path={tmp_path}/broken")
    with pytest.raises(UserError, match=r"^model.path: cannot load"):
        load_tokenizer_and_model(cfg.model, cfg.adapter)
