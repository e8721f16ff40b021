"""The study's released protocol next to medinject's (README, "Evaluation"): allowed tokens and new
tokens, per-item limits in the shared prefill, the released judge under left padding, METEOR against
nltk, a released smoke run read back item by item, `experiment=paper` as released (the batches of a
shrunk paper run), and a per-source layout with chat items."""

import json
from pathlib import Path

import evaluate
import lightning as L
import pytest
import torch

from conftest import compose_cfg
from medinject.config import EvalProtocol
from medinject.eval import decoding
from medinject.eval.decoding import AllowedTokens, decode_choices, generate, new_tokens, option_token_ids
from medinject.eval.judge import RELEASED_SYSTEM_PROMPT, Judge, parse_verdict_released
from medinject.eval.letters import join_letters, parse_letters_released
from medinject.eval.runner import metric_module
from medinject.run import run

RELEASED, MEDINJECT = EvalProtocol.released, EvalProtocol.medinject


@pytest.fixture(scope="module")
def tiny():
    from medinject.model.load import load_tokenizer_and_model

    cfg = compose_cfg("adapter=lora")
    tokenizer, model = load_tokenizer_and_model(cfg.model, cfg.adapter)
    return cfg, tokenizer, model.eval()


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------ decoding


def test_new_tokens_follow_the_protocol():
    assert [new_tokens(RELEASED, t, 5, 8) for t in ("mcqu", "mcq", "oeq")] == [1, 10, 512]
    assert new_tokens(RELEASED, "mcq", 4, 8) == 8
    assert [new_tokens(MEDINJECT, t, 5, 8) for t in ("mcqu", "mcq")] == [8, 8]


def test_released_allowed_tokens_are_the_released_set_with_no_grammar(tiny):
    _, tokenizer, _ = tiny
    options = [("A", "B", "C"), ("A", "B", "C", "D", "E")]
    released = AllowedTokens.for_items(tokenizer, options, RELEASED)
    for row, opts in enumerate(options):
        expected = {_ids(tokenizer, x)[-1] for x in opts} | {_ids(tokenizer, f" {x}")[-1] for x in opts}
        expected |= {_ids(tokenizer, s)[-1] for s in (",", ", ", " ", ",\n")}
        expected |= {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        assert set(released.allowed[row]) == expected
    assert _ids(tokenizer, " A")[-1] != _ids(tokenizer, "A")[-1]  # both spellings of a letter count
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in released.allowed[0]  # a special token without eos/eot/im_end
    vocab = len(tokenizer)
    letter = _ids(tokenizer, "A")[0]
    first = released.mask(None, vocab, "cpu")
    assert torch.equal(first, released.mask([letter, letter], vocab, "cpu"))  # a letter may follow a letter
    ours = AllowedTokens.for_items(tokenizer, options, MEDINJECT)
    assert ours.mask([letter, letter], vocab, "cpu")[0, letter].item()  # medinject: no letter right after a letter


def test_shared_prefill_with_per_item_limits_equals_separate_generate_calls(tiny):
    _, tokenizer, model = tiny
    options = [("A", "B", "C", "D")] * 2 + [("A", "B", "C", "D", "E")] * 3
    limits = [1, 2 * 4, 1, 2 * 5, 3]
    prompts = [f"<|im_start|>user\n{'Question longue sur le traitement. ' * n}Réponse ?<|im_end|>\n<|im_start|>assistant\n" for n in (1, 5, 2, 9, 3)]
    constraint = AllowedTokens.for_items(tokenizer, options, RELEASED)
    letters = [option_token_ids(tokenizer, opts) for opts in options]
    greedy = generate(model, tokenizer, prompts, 1, limits, "g")
    constrained, first = generate(model, tokenizer, prompts, 1, limits, "c", constraint, letters)
    shared_greedy, shared_constrained, shared_first = decode_choices(model, tokenizer, prompts, 4, limits, constraint, letters, "s")
    assert shared_greedy == greedy and shared_constrained == constrained
    for a, b, ids in zip(first, shared_first, letters):
        assert list(a) == list(b) == ids
        torch.testing.assert_close(torch.tensor(list(a.values())), torch.tensor(list(b.values())), rtol=1e-4, atol=1e-4)
    for text, limit, allowed in zip(shared_constrained, limits, constraint.allowed):
        ids = _ids(tokenizer, text)
        assert len(ids) <= limit and set(ids) <= set(allowed)
    for prompt, limit, text in zip(prompts, limits, shared_greedy):  # each row's own limit, as generate applies it alone
        assert generate(model, tokenizer, [prompt], 1, limit, "alone") == [text]
    assert len(set(shared_greedy)) > 1 and len(shared_greedy[1]) > len(shared_greedy[0])


# ------------------------------------------------------------------------------ judge


@pytest.mark.parametrize(
    "text,verdict",
    [("1", 1), ("0", 0), (" 1", 1), ("Score: 0", 0), ("1.", 1), ("10", 1), ("01", 0), ("x1y", 1), ("score 2 or 0", 0), ("2", None), ("", None), ("oui", None)],
)
def test_released_verdict_is_the_first_word_0_or_1_else_the_first_digit_0_or_1(text, verdict):
    assert parse_verdict_released(text) == verdict


def test_released_judge_decodes_only_its_one_new_token_under_left_padding(tiny, tmp_path):
    cfg, tokenizer, model = tiny
    judge_cfg = compose_cfg("eval=judge", "eval.judge.rubric=released").eval.judge
    judge = Judge(judge_cfg, str(tmp_path))
    # answers of very different lengths, prompts ending in 0/1 digits: a cut at the unpadded length
    # would read the tail of the longer prompts' neighbours
    items = [("Quel traitement ?", "1", "0"), ("Quel examen ? " * 30, "0 1 0 1", "1 0 " * 40), ("Dose ?", "10 mg", "1")]
    conversations = [judge.messages(*item) for item in items]
    assert conversations[0][0] == {"role": "system", "content": RELEASED_SYSTEM_PROMPT}
    assert conversations[0][1]["content"] == "Question: Quel traitement ?\nCandidate_answer: 0\nGround_truth: 1"
    judged = judge.verdicts(items)
    for conversation, (verdict, output) in zip(conversations, judged):
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        alone = generate(model, tokenizer, [text], 1, 1, "alone")[0]  # no padding at all
        assert output == alone and len(_ids(tokenizer, output)) <= 1
        assert verdict == parse_verdict_released(output)
    assert "Réponse de référence" in Judge(compose_cfg("eval=judge").eval.judge, str(tmp_path)).messages(*items[0])[0]["content"]


# ------------------------------------------------------------------------------ METEOR

FRENCH_PAIRS = [
    ("Le traitement repose sur l'amoxicilline pendant sept jours.", "Amoxicilline pendant 7 jours."),
    ("Une IRM cérébrale en urgence.", "IRM cérébrale urgente."),
    ("Hypokaliémie sévère", "Hypokaliémie sévère avec ondes U."),
    ("Arrêt immédiat du médicament", "Arrêt du médicament."),
    ("La patiente présente une infection urinaire basse.", "Il s'agit d'une cystite aiguë simple."),
    ("Le diagnostic est une embolie pulmonaire.", "Embolie pulmonaire."),
    ("Il faut doser la troponine.", "Dosage de la troponine ultrasensible."),
    ("Une hypertension artérielle essentielle", "hypertension artérielle"),
    ("Le patient doit être hospitalisé en réanimation.", "Hospitalisation en soins intensifs."),
    ("Antibiothérapie probabiliste par ceftriaxone", "Ceftriaxone intraveineuse"),
    ("La radiographie du thorax montre une pneumonie.", "Pneumopathie franche lobaire aiguë."),
    ("Surveillance de la glycémie capillaire", "Surveiller la glycémie."),
    ("Il n'y a pas de traitement spécifique.", "Traitement symptomatique uniquement."),
    ("Une ponction lombaire est indiquée", "Ponction lombaire en urgence."),
    ("Le risque principal est l'hémorragie.", "Risque hémorragique."),
    ("Metformine en première intention", "La metformine est le traitement de première intention."),
    ("Vaccination contre la grippe chaque année", "Vaccin antigrippal annuel."),
    ("Échographie abdominale", "Échographie hépatique et des voies biliaires."),
    ("", "Réponse attendue non vide."),
    ("Le patient a une fièvre élevée et une toux.", "Fièvre et toux."),
    ("Corticothérapie à forte dose", "corticoïdes à forte dose"),
    ("The infection is viral.", "The disease is a viral infection."),
]


def test_meteor_module_equals_nltk_meteor_score_on_french_pairs(tmp_path):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.meteor_score import meteor_score

    metric = evaluate.load(metric_module("meteor"), keep_in_memory=True)
    predictions, references = zip(*FRENCH_PAIRS)
    mean = metric.compute(predictions=predictions, references=references, cache_dir=str(tmp_path))["meteor"]
    wordnet = WordNetCorpusReader(str(tmp_path / "nltk_data" / "corpora" / "wordnet"), None)  # the staged WordNet 3.0
    assert wordnet.get_version() == "3.0" and wordnet.synsets("infection")
    expected = [meteor_score([wordpunct_tokenize(r)], wordpunct_tokenize(p), wordnet=wordnet) for p, r in FRENCH_PAIRS]
    assert len(expected) >= 20 and len(set(expected)) > 10
    assert mean == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    for (p, r), value in zip(FRENCH_PAIRS[:6], expected):
        assert metric.compute(predictions=[p], references=[r], cache_dir=str(tmp_path))["meteor"] == pytest.approx(value, abs=1e-6)


def test_meteor_without_wordnet_fails_with_one_line(tmp_path):
    metric = evaluate.load(metric_module("meteor"), keep_in_memory=True)
    with pytest.raises(FileNotFoundError) as err:
        metric.compute(predictions=["a"], references=["a"], wordnet=str(tmp_path), cache_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "wordnet-base" in message and str(tmp_path) in message


# ------------------------------------------------------------------------------ a released run


def _records(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "predictions.jsonl").read_text().splitlines()]


def test_released_smoke_run_reads_every_item_by_the_released_rule(smoke_cfg, monkeypatch, tiny):
    _, tokenizer, _ = tiny
    monkeypatch.setattr(decoding, "RELEASED_OEQ_NEW_TOKENS", 12)  # 512 random tokens per answer is minutes on CPU
    cfg = smoke_cfg("eval=judge", "eval.protocol=released", "eval.judge.rubric=released", "eval.limit=4", "trainer.max_steps=4")
    result = run(cfg)
    metrics = result["metrics"]
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["eval"]["protocol"] == "released" and results["eval"]["judge"]["rubric"] == "released"
    records = _records(cfg.paths.output_dir)
    for test_set in ("native", "translated"):
        for task in ("mcqu", "mcq"):
            mine = [r for r in records if r["test_set"] == test_set and r["task"] == task]
            assert len(mine) == 4
            for r in mine:
                assert {"output", "prediction", "output_constrained", "prediction_constrained", "options", "reference", "test_set", "task"} <= set(r)
                for suffix in ("", "_constrained"):
                    read = join_letters(parse_letters_released(r[f"output{suffix}"], r["options"], single=task == "mcqu"))
                    assert r[f"prediction{suffix}"] == read
                assert "<|im_start|>system" not in r["prompt"] and "Répondez" not in r["prompt"]  # nothing added
                limit = 1 if task == "mcqu" else 2 * len(r["options"])
                assert len(_ids(tokenizer, r["output_constrained"])) <= limit
                assert abs(sum(r["option_probabilities"].values()) - 1) < 1e-4
            for suffix in ("", "_constrained"):
                assert metrics[f"eval/{test_set}/{task}/em{suffix}"] == pytest.approx(sum(r[f"em{suffix}"] for r in mine) / 4)
                if task == "mcq":
                    assert metrics[f"eval/{test_set}/mcq/hamming{suffix}"] == pytest.approx(sum(r[f"hamming{suffix}"] for r in mine) / 4)
                else:
                    assert f"eval/{test_set}/mcqu/hamming{suffix}" not in metrics  # Hamming: multi-answer only
            if task == "mcqu":
                assert all(r["prediction_loglik"] == max(r["option_probabilities"], key=r["option_probabilities"].get) for r in mine)
                assert metrics[f"eval/{test_set}/mcqu/em_loglik"] == pytest.approx(sum(r["em_loglik"] for r in mine) / 4)
        assert 0.0 <= metrics[f"eval/{test_set}/oeq/meteor"] <= 1.0
        assert f"eval/{test_set}/oeq/judge_unparsable" in metrics


# ------------------------------------------------------------------------------ experiment=paper


class BatchSpy(L.Callback):
    """A Lightning callback (given as a `_target_` node) keeping every training batch it sees."""

    batches: list = []

    def __init__(self):
        BatchSpy.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        BatchSpy.batches.append({k: v.detach().cpu().clone() for k, v in batch.items() if torch.is_tensor(v)})


def test_a_shrunk_paper_run_trains_on_multiple_choice_only_with_the_loss_over_whole_sequences(tmp_path):
    cfg = compose_cfg(
        "experiment=paper", "model=tiny", "trainer=cpu", "logger=csv", "trainer.enable_progress_bar=false",
        "mix.budget=24", "trainer.max_steps=3", "trainer.batch_size=4", "trainer.accumulate_grad_batches=1",
        "eval.tasks=[mcqu]", "eval.limit=2", "eval.judge.backend=none", "+callbacks.spy._target_=test_released.BatchSpy",
        output_dir=tmp_path / "paper",
    )
    assert cfg.data.completion_only_loss is False and [t.value for t in cfg.data.train_tasks] == ["mcqu", "mcq"]
    result = run(cfg)
    assert result["status"] == "completed"
    counts = result["data"]["counts"]
    assert set(t for c in counts.values() for t in c) <= {"mcqu", "mcq"} and sum(sum(c.values()) for c in counts.values()) == 24
    assert len(BatchSpy.batches) == 3
    for batch in BatchSpy.batches:
        ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
        starts = positions == 0  # padding-free: one row, positions restart at each example
        assert torch.equal(labels[~starts], ids[~starts])  # every token but an example's first is a label: prompt included
        assert (labels[starts] == -100).all()
    from medinject.model.load import load_tokenizer_and_model

    tokenizer, _ = load_tokenizer_and_model(cfg.model, cfg.adapter)
    text = tokenizer.decode(BatchSpy.batches[0]["input_ids"][0])
    assert "<|im_start|>system" not in text and "A. " in text  # own turns only, multiple-choice options


def test_padding_free_batches_are_exact_with_the_loss_over_whole_sequences():
    from medinject.data.prepare import prepare_data
    from medinject.model.load import attach_adapter, load_tokenizer_and_model
    from medinject.train.datamodule import InstructionDataModule, collate_padded, collate_padding_free

    cfg = compose_cfg("data.completion_only_loss=false", "data.cache=false", "data.train_tasks=[mcqu,mcq]", "mix=natural")
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    model = attach_adapter(base, cfg.adapter, gradient_checkpointing=False).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    prepared = prepare_data(cfg)
    module = InstructionDataModule(cfg, tokenizer, prepared.examples[:6], prepared.manifest["files"])
    module.setup("fit")
    features = [module.train_set[i] for i in range(6)]
    assert all(f["labels"] == f["input_ids"] for f in features)  # whole sequences
    free, padded = collate_padding_free(features), collate_padded(features, tokenizer.pad_token_id)
    padded["labels"][:, 0] = -100  # the padding-free row cannot predict an example's first token either
    with torch.no_grad():
        loss_free = model(**free, use_cache=False).loss
        loss_padded = model(**padded, use_cache=False).loss
    torch.testing.assert_close(loss_free, loss_padded, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ per-source chat items


def _chat(question, options, answer, system=None):
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    item = {"messages": turns + [{"role": "assistant", "content": answer if isinstance(answer, str) else ", ".join(answer)}]}
    if options:
        item.update({"classes": list(options), "answer": answer})
    return item


def _schema(question, options, answer, type_):
    context = "\n".join(f"{x}. choix {x.lower()} numéro {i} {question[-12:]}" for i, x in enumerate(options))
    return {"instruction": question, "context": context, "answer": answer, "type": type_, "origin": "native"}


def _write_layout(root: Path) -> None:
    def write(split, task, name, rows):
        folder = root / "Native" / split / task
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")

    abcd = ("A", "B", "C", "D")
    for split, suffix, n in (("Train", "train", 12), ("Test", "test", 3)):
        tag = "entraînement" if split == "Train" else "examen"
        mcqu, mcq, oeq = [], [], []
        for i in range(n):
            if split == "Train":
                q = f"Question {tag} {i} sur le cas clinique numéro {i * 7} ?"
                options_text = "\n".join(f"{x}. proposition {x} {i}" for x in abcd)
            else:  # worded apart from the training rows, so decontamination keeps every training row
                q = f"Question {tag} {i} : que faire devant ce tableau aigu ?"
                options_text = "\n".join(f"{x}. conduite {x.lower()}{i}" for x in abcd)
            # rows of both shapes in one file: schema rows and chat items
            mcqu.append(_schema(q, abcd, "ABCD"[i % 4], "mcqu") if i % 2 else _chat(f"{q}\n{options_text}", abcd, "ABCD"[i % 4], system="Tu es médecin."))
            mcq.append(_schema(q, abcd, "A, C", "mcq") if i % 2 else _chat(f"{q}\n{options_text}", abcd, ["B", "D"]))
            oeq.append({"instruction": q, "context": "", "answer": f"Réponse {tag} {i}.", "type": "oeq", "origin": "native"} if i % 2 else _chat(q, (), f"Réponse {tag} {i}."))
        write(split, "mcqu", f"mcqu_{suffix}.json", mcqu)
        write(split, "mcq", f"mcq_{suffix}.json", mcq)
        write(split, "oeq", f"oeq_{suffix}.json", oeq)


def test_a_per_source_layout_with_chat_items_loads_trains_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setattr(decoding, "RELEASED_OEQ_NEW_TOKENS", 8)
    root = tmp_path / "MedInjection-FR"
    _write_layout(root)
    cfg = compose_cfg(
        "experiment=smoke", "logger=csv", "trainer.enable_progress_bar=false", f"paths.medinjection={root}", "data=native",
        "~eval.test_sets.translated", "mix.budget=24", "trainer.max_steps=2", "eval.limit=3", "eval.protocol=released",
        output_dir=tmp_path / "run",
    )
    result = run(cfg)
    assert result["status"] == "completed"
    manifest = json.loads((Path(cfg.paths.output_dir) / "manifest.json").read_text())
    assert manifest["sources"]["native"]["rows"] == 36  # 12 per folder, both row shapes read
    assert manifest["test_sets"]["native"]["by_type"] == {"mcqu": 3, "mcq": 3, "oeq": 3}
    counts = result["data"]["counts"]["native"]
    assert set(counts) == {"mcqu", "mcq", "oeq"} and sum(counts.values()) == 24
    records = _records(cfg.paths.output_dir)
    assert {(r["task"], r["reference"]) for r in records if r["task"] != "oeq"} == {("mcqu", "A"), ("mcqu", "B"), ("mcqu", "C"), ("mcq", "B, D"), ("mcq", "A, C")}
    chat = [r for r in records if r["task"] == "mcqu" and r["source"].endswith(":1")][0]
    assert chat["prompt"].startswith("<|im_start|>system\nTu es médecin.<|im_end|>\n<|im_start|>user\nQuestion examen 0")
    assert chat["options"] == ["A", "B", "C", "D"]
    oeq = [r for r in records if r["task"] == "oeq"]
    assert [r["reference"] for r in oeq] == ["Réponse examen 0.", "Réponse examen 1.", "Réponse examen 2."]
    assert result["metrics"]["eval/native/oeq/meteor"] >= 0.0


# ------------------------------------------------------------------------------ the report


def test_the_report_puts_both_protocols_side_by_side(tmp_path):
    import csv

    from medinject.report.build import build_report

    sweep = tmp_path / "sweep"
    expected = {}
    for config in ("native", "synthetic"):
        for seed in (1, 2):
            for protocol, offset in (("medinject", 0), ("released", 1)):
                run_dir = sweep / f"{config}-s{seed}-{protocol}"
                run_dir.mkdir(parents=True)
                ems = [float((i + seed + offset) % 3 == 0) for i in range(6)]  # per item, differs by protocol
                items = [{"test_set": "native", "task": "mcqu", "id": f"q{i}", "em": em, "em_constrained": 1.0} for i, em in enumerate(ems)]
                (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
                metrics = {"eval/native/mcqu/em": sum(ems) / 6, "eval/native/mcqu/em_constrained": 1.0, "eval/native/mcqu/n": 6.0}
                results = {"status": "completed", "data": {"config": config, "seed": seed}, "metrics": metrics, "eval": {"protocol": protocol, "judge": None}}
                (run_dir / "results.json").write_text(json.dumps(results))
                expected.setdefault((config, f"eval/native/mcqu/em@{protocol}"), []).extend(ems)
    build_report(sweep, baseline="native", n_resamples=100)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    found = {(r["config"], r["metric"]): r for r in rows if r["metric"].startswith("eval/")}
    for key, ems in expected.items():
        assert float(found[key]["mean"]) == pytest.approx(sum(ems) / len(ems))  # each protocol's own items
        assert found[key]["n_seeds"] == "2"
    metrics_in_order = list(dict.fromkeys(r["metric"] for r in rows if r["metric"].startswith("eval/")))
    assert metrics_in_order[:2] == ["eval/native/mcqu/em@medinject", "eval/native/mcqu/em@released"]  # side by side
    assert "eval/native/mcqu/em" not in {r["metric"] for r in rows}


def test_a_run_without_wordnet_stops_before_training_with_one_line(smoke_cfg, tmp_path):
    from medinject.util.errors import UserError

    cfg = smoke_cfg(f"paths.wordnet={tmp_path / 'no-wordnet'}")
    with pytest.raises(UserError) as err:
        run(cfg)
    message = str(err.value)
    assert "\n" not in message and "wordnet-base" in message and "eval.meteor=false" in message
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    assert not (out / "checkpoints").exists() and not (out / "adapter").exists()  # it never trained


def test_reevaluating_a_run_under_the_released_protocol_records_it(smoke_cfg):
    import yaml

    from medinject.eval.reevaluate import reevaluate

    cfg = smoke_cfg("trainer.max_steps=2", "eval.tasks=[mcqu]", "eval.limit=3")
    assert run(cfg)["status"] == "completed"
    out = Path(cfg.paths.output_dir)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["eval"]["judge"]["rubric"] = saved["eval"]["judge"].pop("medinject_rubric")  # as runs before the choice wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(saved, allow_unicode=True))
    before = json.loads((out / "results.json").read_text())
    assert before["eval"]["protocol"] == "medinject"
    first = _records(out)  # em_loglik under medinject's protocol too: the argmax of the first-step probabilities
    assert all(r["prediction_loglik"] == max(r["option_probabilities"], key=r["option_probabilities"].get) for r in first)
    assert before["metrics"]["eval/native/mcqu/em_loglik"] == pytest.approx(sum(r["em_loglik"] for r in first if r["test_set"] == "native") / 3)
    metrics = reevaluate(out, ["eval.protocol=released"])
    after = json.loads((out / "results.json").read_text())
    assert after["eval"]["protocol"] == "released" and after["metrics"]["eval/native/mcqu/em"] == metrics["eval/native/mcqu/em"]
    records = _records(out)
    assert all(r["prediction"] == join_letters(parse_letters_released(r["output"], r["options"], single=True)) for r in records)
    assert all("<|im_start|>system" not in r["prompt"] for r in records)
