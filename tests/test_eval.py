"""Evaluation: metric modules against their libraries, constrained decoding on real generations,
the judge (local tiny model and an OpenAI-compatible server on 127.0.0.1), length control."""

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import evaluate
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from conftest import compose_cfg
from medinject.eval.judge import Judge, parse_verdict
from medinject.eval.decoding import AllowedTokens, generate, option_token_ids, single_token
from medinject.eval.runner import length_controlled, metric_module

PREDICTIONS = ["Le traitement repose sur l'amoxicilline pendant 7 jours.", "Hypokaliémie sévère", "", "Une IRM cérébrale en urgence."]
REFERENCES = ["Amoxicilline pendant 7 jours.", "Hypokaliémie sévère avec ondes U.", "Arrêt du médicament.", "IRM cérébrale urgente."]


def test_bleu_module_equals_sacrebleu():
    scores = evaluate.load(metric_module("bleu"), keep_in_memory=True).compute(predictions=PREDICTIONS, references=REFERENCES)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)


def test_rouge_module_equals_rouge_score_with_unicode_words():
    import re

    class Words:
        def tokenize(self, text):
            return re.findall(r"[^\W_]+", text.lower())

    scores = evaluate.load(metric_module("rouge"), keep_in_memory=True).compute(predictions=PREDICTIONS, references=REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Words())
    direct = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert scores[name] == pytest.approx(sum(d[name].fmeasure for d in direct) / len(direct))
    assert scores["rouge1"] > 0.3  # accents do not split words: "hypokaliémie" matches itself


@pytest.fixture(scope="module")
def tiny():
    from medinject.model.load import load_tokenizer_and_model

    cfg = compose_cfg("adapter=lora")
    tokenizer, model = load_tokenizer_and_model(cfg.model, cfg.adapter)
    return cfg, tokenizer, model.eval()


def test_bertscore_module_with_the_tiny_encoder(tiny):
    cfg, _, _ = tiny
    metric = evaluate.load(metric_module("bertscore"), keep_in_memory=True)
    same = metric.compute(predictions=REFERENCES, references=REFERENCES, model_path=cfg.model.path)
    assert same["bertscore_f1"] == pytest.approx(1.0, abs=1e-5)
    other = metric.compute(predictions=PREDICTIONS, references=REFERENCES, model_path=cfg.model.path)
    assert other["bertscore_f1"] < 0.99


def test_constrained_decoding_only_emits_allowed_tokens(tiny):
    cfg, tokenizer, model = tiny
    letters = option_token_ids(tokenizer, ("A", "B", "C"))
    separators = [single_token(tokenizer, s) for s in (",", " ")]
    allowed = letters + [t for t in separators if t is not None] + [tokenizer.eos_token_id]
    prompts = [f"<|im_start|>user\nQuestion {i} : quel traitement ?<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        free = model.generate(**encoded, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out = model.generate(
            **encoded,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            logits_processor=[AllowedTokens([allowed] * 6, [letters] * 6)],
        )
    new_free = free[:, encoded["input_ids"].shape[1] :]
    assert not set(new_free.flatten().tolist()) <= set(allowed)  # unconstrained, the random model wanders
    new = out[:, encoded["input_ids"].shape[1] :]
    assert set(new.flatten().tolist()) <= set(allowed) | {tokenizer.pad_token_id}
    assert set(new[:, 0].tolist()) <= set(letters)  # never an empty answer
    texts, first = generate(model, tokenizer, prompts, 4, 6, "t", AllowedTokens([allowed] * 6, [letters] * 6), [letters] * 6)
    assert all(t.strip() and set(t) <= set("ABC, ") for t in texts)
    assert not any(re.search("[ABC]{2}", t) for t in texts)  # a letter is followed by a separator or the end
    # only the option letters' first-step logits are kept, never a copy of the whole vocabulary
    assert all(list(f) == letters for f in first)


@pytest.mark.parametrize("text,verdict", [("1", 1), ("0", 0), (" 1.", 1), ("**0**", 0), ("1 - la réponse couvre", 1), ("10", None), ("Oui", None), ("", None)])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_length_controlled_score_removes_a_length_bias():
    # a judge that says 1 to every long answer and 0 to every short one: raw 0.5 over a 50/50 split,
    # but when long answers are 3 times as many, the raw score rewards length and the controlled one does not
    lengths = [5] * 10 + [50] * 30
    verdicts = [0] * 10 + [1] * 30
    raw = sum(verdicts) / len(verdicts)
    assert raw == 0.75
    assert length_controlled(lengths, verdicts, bins=2) == pytest.approx((0 * 10 / 20 + 1 * 10 / 20 + 1) / 2)
    assert length_controlled(lengths, [None] * 40, bins=4) is None


def test_local_judge_counts_unparsable_outputs_and_caches_verdicts(tiny, tmp_path):
    cfg, _, _ = tiny
    judge_cfg = compose_cfg("eval=judge").eval.judge
    judge = Judge(judge_cfg, str(tmp_path))
    items = [("Quel traitement ?", "Amoxicilline.", "Amoxicilline 1 g trois fois par jour."), ("Quel examen ?", "Une IRM.", "Un scanner.")]
    first = judge.verdicts(items)
    assert len(first) == 2 and judge.calls == 2
    assert all(v in (0, 1, None) for v, _ in first)
    again = Judge(judge_cfg, str(tmp_path))
    assert again.verdicts(items) == first and again.calls == 0  # read back from the cache


class FakeOpenAI(BaseHTTPRequestHandler):
    replies = ["1", "0", "je ne sais pas"]
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.seen.append((self.headers.get("Authorization"), body))
        content = FakeOpenAI.replies[(len(FakeOpenAI.seen) - 1) % len(FakeOpenAI.replies)]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_run_with_an_openai_compatible_judge_keeps_the_key_out_of_the_run(smoke_cfg, monkeypatch):
    from medinject.run import run

    secret = "sk-test-planted-judge-key-0123456789"
    monkeypatch.setenv("MEDINJECT_JUDGE_KEY", secret)
    server = HTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeOpenAI.seen = []
    try:
        cfg = smoke_cfg(
            "eval.judge.backend=openai",
            "eval.judge.model=judge-model",
            f"eval.judge.base_url=http://127.0.0.1:{server.server_port}/v1",
            "eval.judge.api_key_env=MEDINJECT_JUDGE_KEY",
            "eval.limit=3",
            "trainer.max_steps=2",
        )
        metrics = run(cfg)["metrics"]
    finally:
        server.shutdown()
    assert len(FakeOpenAI.seen) == 6  # three open answers per test set
    assert all(auth == f"Bearer {secret}" and body["model"] == "judge-model" for auth, body in FakeOpenAI.seen)
    assert "Réponse de référence :" in FakeOpenAI.seen[0][1]["messages"][0]["content"]  # the French rubric, filled in
    for test_set in ("native", "translated"):
        assert metrics[f"eval/{test_set}/oeq/judge_unparsable"] == 1.0
        assert metrics[f"eval/{test_set}/oeq/judge"] == pytest.approx(0.5)
        assert not math.isnan(metrics[f"eval/{test_set}/oeq/judge_length_controlled"])
    for folder in (Path(cfg.paths.output_dir), Path(cfg.paths.cache_dir) / "judge"):
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    predictions = [json.loads(line) for line in (Path(cfg.paths.output_dir) / "predictions.jsonl").read_text().splitlines()]
    oeq = [p for p in predictions if p["task"] == "oeq"]
    assert [p["judge"] for p in oeq[:3]] == [1, 0, None]


def test_shared_prefill_decoding_equals_two_generate_calls(tiny):
    from medinject.eval.decoding import decode_choices

    cfg, tokenizer, model = tiny
    letters = option_token_ids(tokenizer, ("A", "B", "C", "D"))
    allowed = letters + [single_token(tokenizer, ","), tokenizer.eos_token_id]
    prompts = [
        f"<|im_start|>user\n{'Question longue sur le traitement. ' * n}Réponse ?<|im_end|>\n<|im_start|>assistant\n" for n in (1, 5, 2, 9, 3)
    ]
    greedy = generate(model, tokenizer, prompts, 1, 6, "g")
    constrained, first = generate(model, tokenizer, prompts, 1, 6, "c", AllowedTokens([allowed] * 5, [letters] * 5), [letters] * 5)
    shared_greedy, shared_constrained, shared_first = decode_choices(
        model, tokenizer, prompts, 4, 6, AllowedTokens([allowed] * 5, [letters] * 5), [letters] * 5, "s"
    )
    assert shared_greedy == greedy
    assert shared_constrained == constrained
    for a, b in zip(first, shared_first):
        assert list(a) == list(b) == letters  # the letters' logits only, not the vocabulary
        torch.testing.assert_close(torch.tensor(list(a.values())), torch.tensor(list(b.values())), rtol=1e-4, atol=1e-4)


def test_both_decoders_stop_on_the_generation_configs_eos_as_vllm_does(tiny):
    """vLLM stops on the tokenizer's EOS and every `eos_token_id` of the generation config (Qwen3
    instruct lists <|im_end|> and <|endoftext|>); the transformers paths must stop on the same set."""
    from medinject.eval.decoding import decode_choices, stop_token_ids

    _, tokenizer, model = tiny
    prompt = "<|im_start|>user\nQuelle est la dose ?<|im_end|>\n<|im_start|>assistant\n"
    encoded = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        first = int(model(**encoded).logits[0, -1].argmax())  # the token greedy decoding emits first
    assert first != tokenizer.eos_token_id
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, first]
        assert stop_token_ids(tokenizer, model) == sorted({tokenizer.eos_token_id, first})
        # generate keeps the stop token itself; decoded without special tokens it is that one token's text
        assert generate(model, tokenizer, [prompt], 1, 6, "g") == [tokenizer.decode([first], skip_special_tokens=True)]
        letters = option_token_ids(tokenizer, ("A", "B"))
        allowed = AllowedTokens([letters + [tokenizer.eos_token_id]], [letters])
        greedy, _, _ = decode_choices(model, tokenizer, [prompt], 1, 6, allowed, [letters], "s")
        assert greedy == [tokenizer.decode([first], skip_special_tokens=True)]
    finally:
        model.generation_config.eos_token_id = saved


def test_every_protocol_and_backend_value_has_its_registered_class():
    from medinject.config import EvalBackend, EvalProtocol
    from medinject.eval.backends import BACKENDS, FALLBACK
    from medinject.eval.engine import Engine
    from medinject.eval.protocol import Protocol
    from medinject.eval.protocols import PROTOCOLS, protocol_for

    assert set(PROTOCOLS) == set(EvalProtocol) and set(BACKENDS) == set(EvalBackend) and FALLBACK in BACKENDS
    for name, kind in PROTOCOLS.items():
        assert issubclass(kind, Protocol) and kind.name == name and protocol_for(name.value).name == name
    assert all(issubclass(kind, Engine) for kind in BACKENDS.values())
    assert BACKENDS[FALLBACK].refusal(compose_cfg("adapter=qlora")) is None  # the fallback evaluates any run
