"""The data stage on the bundled sample: its sources and test sets, bad rows named by file, line and
field, equal-budget and natural mixing (seeded, independent of source order), labels that mask the
prompt, over-long examples cut or dropped and counted, padding and the chat template's answer frame."""

import json
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from medinject.config import DataSettings
from conftest import compose_cfg
from medinject.config import MixConfig, SourceConfig, sample_data_dir
from medinject.data.mix import select
from medinject.train.datamodule import collate_padded, tokenize
from medinject.data.prepare import counts, prepare_data
from medinject.data.prompts import IGNORE_INDEX
from medinject.data.sources import load_source
from medinject.util.errors import UserError

SAMPLE = Path(sample_data_dir())
PATHS = OmegaConf.create({"medinjection": None})


def load_rows(files, key="test", expected_origin=None):
    src = OmegaConf.merge(OmegaConf.structured(SourceConfig), {"files": files, "origin": expected_origin, "format": "jsonl"})
    return load_source(src, PATHS, key).rows


def read_jsonl(path, expected_origin=None):
    return load_rows([str(path)], expected_origin=expected_origin)


def mix(strategy, budget=None, **extra):
    return OmegaConf.merge(OmegaConf.structured(MixConfig), {"strategy": strategy, "budget": budget, **extra})


@pytest.mark.parametrize("origin", ["native", "synthetic", "translated"])
def test_bundled_training_sources_are_valid_and_big_enough(origin):
    rows = load_rows([str(SAMPLE / origin / "train")], key="test", expected_origin=origin)
    assert len(rows) >= 150
    by_type = {t: sum(r.type == t for r in rows) for t in ("mcqu", "mcq", "oeq")}
    assert all(n > 0 for n in by_type.values()), by_type
    assert len({r.id for r in rows}) == len(rows), "duplicate rows"


@pytest.mark.parametrize("origin", ["native", "translated"])
def test_bundled_test_sets_have_40_items_per_task_and_do_not_overlap_training(origin):
    test_rows = load_rows([str(SAMPLE / origin / "test")], key="test", expected_origin=origin)
    for task in ("mcqu", "mcq", "oeq"):
        assert sum(r.type == task for r in test_rows) >= 40, task
    train_rows = [r for o in ("native", "synthetic", "translated") for r in load_rows([str(SAMPLE / o / "train")])]
    train_questions = {(r.instruction.strip().lower(), r.context.strip().lower()) for r in train_rows}
    leaked = [r for r in test_rows if (r.instruction.strip().lower(), r.context.strip().lower()) in train_questions]
    assert not leaked


GOOD = {"instruction": "Quel est le diagnostic ?", "context": "A. Un\nB. Deux\nC. Trois", "answer": "B", "type": "mcqu", "origin": "native"}


@pytest.mark.parametrize(
    "change,field,message",
    [
        ({"answer": "F"}, "answer", "not among the options"),
        ({"answer": "A, B"}, "answer", "exactly one correct letter"),
        ({"type": "qcm"}, "type", "is not one of"),
        ({"origin": "translated"}, "origin", "in a source whose origin is 'native'"),
        ({"context": "pas d'options"}, "context", "needs at least two options"),
        ({"answer": 3}, "answer", "expected a string"),
        ({"instruction": None}, "instruction", "missing"),
        ({"type": "mcq", "answer": "A ; C"}, "answer", "not letters joined by"),
    ],
)
def test_bad_rows_are_reported_with_file_line_and_field(tmp_path, change, field, message):
    path = tmp_path / "rows.jsonl"
    bad = {**GOOD, **change}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_jsonl(path, expected_origin="native")
    text = str(err.value)
    assert text.startswith(f"{path}:2: field '{field}'"), text
    assert message in text and "\n" not in text


def test_missing_field_and_broken_json_are_reported(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({k: v for k, v in GOOD.items() if k != "answer"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"rows.jsonl:1: field 'answer': missing"):
        read_jsonl(path)
    path.write_text('{"instruction": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"rows.jsonl:1: not valid JSON"):
        read_jsonl(path)


def test_missing_source_file_names_the_config_key(tmp_path):
    cfg = compose_cfg(f"data.sources.native.files=[{tmp_path}/absent.jsonl]")
    with pytest.raises(UserError, match=r"^data.sources.native.files: file not found: .*absent.jsonl$"):
        prepare_data(DataSettings.of(cfg))


def _sources():
    return {o: load_rows([str(SAMPLE / o / "train")], expected_origin=o) for o in ("native", "synthetic", "translated")}


def test_equal_budget_gives_every_config_the_same_size_split_equally():
    sources = _sources()
    for names in (["native"], ["native", "synthetic"], ["native", "synthetic", "translated"]):
        chosen = select({n: sources[n] for n in names}, mix("equal_budget", 120), seed=1)
        assert len(chosen) == 120
        assert {o: sum(c.values()) for o, c in counts(chosen).items()} == {n: 120 // len(names) for n in names}
    uneven = select(sources, mix("equal_budget", 100), seed=1)
    assert {o: sum(c.values()) for o, c in counts(uneven).items()} == {"native": 34, "synthetic": 33, "translated": 33}


def test_selection_is_seeded_and_independent_of_source_order():
    sources = _sources()
    reordered = dict(reversed(list(sources.items())))
    first = [e.id for e in select(sources, mix("equal_budget", 90), seed=7)]
    assert first == [e.id for e in select(reordered, mix("equal_budget", 90), seed=7)]
    assert first == [e.id for e in select(sources, mix("equal_budget", 90), seed=7)]
    assert set(first) != {e.id for e in select(sources, mix("equal_budget", 90), seed=8)}


def test_natural_mix_takes_every_row():
    sources = _sources()
    assert len(select(sources, mix("natural"), seed=0)) == sum(len(v) for v in sources.values())


def test_a_source_too_small_for_its_share_says_by_how_much():
    sources = _sources()
    n = len(sources["native"])
    with pytest.raises(UserError, match=rf"source 'native' has {n} training rows, 10 short of its equal share of {n + 10}"):
        select({"native": sources["native"]}, mix("equal_budget", n + 10), seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    from medinject.model.load import load_tokenizer_and_model

    cfg = compose_cfg("adapter=lora")
    tok, _ = load_tokenizer_and_model(cfg.model, cfg.adapter)
    return tok


def _tokenize(tokenizer, examples, *overrides):
    cfg = compose_cfg("data.cache=false", *overrides)
    dataset, stats = tokenize(examples, tokenizer, cfg)
    return dataset, stats


def test_completion_only_labels_mask_the_prompt_and_keep_the_answer(tokenizer):
    example = _sources()["native"][0]
    masked = _tokenize(tokenizer, [example])[0][0]
    full = _tokenize(tokenizer, [example], "data.completion_only_loss=false")[0][0]
    assert masked["input_ids"] == full["input_ids"] and full["labels"] == full["input_ids"]
    answer_positions = [i for i, label in enumerate(masked["labels"]) if label != IGNORE_INDEX]
    assert answer_positions == list(range(answer_positions[0], len(masked["input_ids"])))
    answer_text = tokenizer.decode([masked["input_ids"][i] for i in answer_positions])
    assert answer_text.startswith(example.answer) and "<|im_end|>" in answer_text
    prompt = tokenizer.decode(masked["input_ids"][: answer_positions[0]])
    assert prompt.endswith("<|im_start|>assistant\n") and example.instruction.strip() in prompt


def test_overlong_examples_are_cut_or_dropped_and_counted(tokenizer):
    example = _sources()["synthetic"][0]
    full = _tokenize(tokenizer, [example], "data.max_length=4096")[0][0]
    prompt_len = sum(label == IGNORE_INDEX for label in full["labels"])
    cut, stats = _tokenize(tokenizer, [example], f"data.max_length={prompt_len + 1}")
    assert len(cut) == 1 and stats["truncated"] == 1 and len(cut[0]["input_ids"]) == prompt_len + 1
    _, stats = _tokenize(tokenizer, [example, _sources()["native"][1]], f"data.max_length={prompt_len + 1}", "data.overlong=drop")
    assert stats["dropped_overlong"] >= 1
    with pytest.raises(UserError, match="data.max_length"):
        _tokenize(tokenizer, [example], f"data.max_length={prompt_len}")


def test_collate_pads_right_and_masks_padding():
    batch = collate_padded([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_answer_frame_renders_like_the_full_template(tokenizer):
    from medinject.data.prompts import answer_frame, completion_text, prompt_text

    hints = {"mcq": "Répondez par les lettres."}
    before, after = answer_frame(tokenizer, "Système.", hints)
    for example in _sources()["translated"][:20]:
        prompt = prompt_text(tokenizer, example, "Système.", hints)
        assert before + example.answer + after == completion_text(tokenizer, example, "Système.", hints, prompt)


def test_rows_take_keeps_the_requested_order_across_chunks():
    from medinject.data.rows import Rows

    examples = _sources()["native"][:10].examples()
    rows = Rows.concat([Rows.from_examples(examples[:4]), Rows.from_examples(examples[4:])])  # two chunks
    picked = rows.take([7, 1, 5, 1, 0])
    assert [e.id for e in picked] == [examples[i].id for i in (7, 1, 5, 1, 0)]
