"""Loaders, bad input, contamination, mixing over the seven configs and the caches (issue: data stage)."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from medinject.config import DataSettings
from conftest import CONF, ROOT, compose_cfg
from medinject.config import SourceConfig, sample_data_dir
from medinject.data.prepare import prepare_data
from medinject.data.sources import load_source
from medinject.util.errors import UserError

SAMPLE = Path(sample_data_dir())
DATA_CONFIGS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def _rows(origin: str, split: str = "train") -> list[dict]:
    rows = []
    for path in sorted((SAMPLE / origin / split).glob("*.jsonl")):
        rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return rows


def _source(medinjection=None, **fields):
    src = OmegaConf.merge(OmegaConf.structured(SourceConfig), fields)
    return src, OmegaConf.create({"medinjection": str(medinjection) if medinjection else None})


def _content(rows):
    return sorted((r.id, r.origin, r.type, r.instruction, r.context, r.answer, r.options) for r in rows)


def _write_all_layout(root: Path, train_rows: list[dict], test_rows: list[dict]) -> None:
    (root / "ALL" / "data").mkdir(parents=True)
    half = len(train_rows) // 2  # two shards, as on the hub
    pq.write_table(pa.Table.from_pylist(train_rows[:half]), root / "ALL" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(train_rows[half:]), root / "ALL" / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(test_rows), root / "ALL" / "data" / "test-00000-of-00001.parquet")


def _write_source_layout(root: Path, subset: str, split_folder: str, rows: list[dict]) -> None:
    for task in ("mcq", "mcqu", "oeq"):
        folder = root / subset / split_folder / task
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [{k: v for k, v in r.items() if k not in ("type", "origin")} for r in rows if r["type"] == task]
        (folder / f"{task}_{split_folder.lower()}.json").write_text(json.dumps(chosen, ensure_ascii=False), encoding="utf-8")


def test_all_loaders_normalize_identical_content_to_identical_records(tmp_path):
    native = _rows("native")
    everything = native + _rows("synthetic") + _rows("translated")
    reference = load_source(*_source(origin="native", format="jsonl", files=[str(SAMPLE / "native" / "train")]), "ref").rows

    _write_all_layout(tmp_path / "hub_all", everything, _rows("native", "test"))
    from_all = load_source(*_source(tmp_path / "hub_all", origin="native", format="auto", subset="Native"), "all").rows

    _write_source_layout(tmp_path / "per_source", "Native", "Train", native)
    from_source = load_source(*_source(tmp_path / "per_source", origin="native", format="auto", subset="Native"), "per").rows

    renamed = [{"question": r["instruction"], "ctx": r["context"], "label": r["answer"], "type": r["type"], "origin": r["origin"]} for r in native]
    (tmp_path / "mapped.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in renamed), encoding="utf-8")
    mapping = {"instruction": "question", "context": "ctx", "answer": "label"}
    from_jsonl = load_source(*_source(origin="native", format="jsonl", files=[str(tmp_path / "mapped.jsonl")], columns=mapping), "map").rows
    pq.write_table(pa.Table.from_pylist(renamed), tmp_path / "mapped.parquet")
    from_parquet = load_source(*_source(origin="native", format="parquet", files=[str(tmp_path / "mapped.parquet")], columns=mapping), "pq").rows

    (tmp_path / "hub_dir").mkdir()
    pq.write_table(pa.Table.from_pylist(everything), tmp_path / "hub_dir" / "train-00000-of-00001.parquet")  # like ALL
    from_hub = load_source(*_source(origin="native", format="hub", hub_id=str(tmp_path / "hub_dir")), "hub").rows

    assert len(reference) == len(native)
    for rows in (from_all, from_source, from_jsonl, from_parquet, from_hub):
        assert _content(rows) == _content(reference)
    assert {r.split for r in from_all} == {"train"}


def test_all_layout_test_split_and_paths_medinjection_feed_a_run(tmp_path):
    _write_all_layout(tmp_path, _rows("native") + _rows("synthetic") + _rows("translated"), _rows("native", "test") + _rows("translated", "test"))
    cfg = compose_cfg(f"paths.medinjection={tmp_path}", "data=native+translated", f"paths.cache_dir={tmp_path}/cache", "mix.budget=40")
    prepared = prepare_data(DataSettings.of(cfg))
    assert prepared.manifest["counts"].keys() == {"native", "translated"}
    assert {name: len(rows) for name, rows in prepared.test_rows.items()} == {"native": 126, "translated": 126}
    assert all(path.startswith(str(tmp_path / "ALL")) for path in prepared.manifest["files"])


def test_chat_format_items_take_their_options_from_classes(tmp_path):
    items = [
        {"messages": [{"role": "system", "content": "Tu es médecin."}, {"role": "user", "content": "Question ?\nA. x\nB. y\nC. z"}, {"role": "assistant", "content": "B"}], "classes": ["A", "B", "C"], "answer": "B"},
        {"messages": [{"role": "user", "content": "Lesquelles ?"}], "classes": ["A", "B", "C", "D"], "answer": ["A", "D"]},
        {"messages": [{"role": "user", "content": "Expliquez."}, {"role": "assistant", "content": "Parce que."}], "classes": []},
    ]
    (tmp_path / "items.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    rows = load_source(*_source(origin="native", format="chat_json", files=[str(tmp_path / "items.json")]), "chat").rows
    assert [(r.type, r.answer, r.options) for r in rows] == [("mcqu", "B", ("A", "B", "C")), ("mcq", "A, D", ("A", "B", "C", "D")), ("oeq", "Parce que.", ())]
    assert rows[0].instruction.startswith("Question ?")


# ---- bad input: one line naming the file, row and field; nothing left behind that claims success ----

GOOD = {"instruction": "Quel est le diagnostic ?", "context": "A. Un\nB. Deux\nC. Trois", "answer": "B", "type": "mcqu", "origin": "native"}


def _bad_jsonl(tmp_path, text: str) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + text + "\n", encoding="utf-8")
    return str(path)


BAD_ROWS = [
    ("{not json", r"bad.jsonl:2: not valid JSON"),
    ("[1, 2]", r"bad.jsonl:2: a row must be a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), r"bad.jsonl:2: field 'answer': missing"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "instruction"}), r"bad.jsonl:2: field 'instruction': missing"),
    (json.dumps({**GOOD, "type": "qcm"}), r"bad.jsonl:2: field 'type': 'qcm' is not one of"),
    (json.dumps({**GOOD, "origin": "scraped"}), r"bad.jsonl:2: field 'origin': 'scraped' is not one of"),
    (json.dumps({**GOOD, "origin": "synthetic"}), r"bad.jsonl:2: field 'origin': 'synthetic' in a source whose origin is 'native'"),
    (json.dumps({**GOOD, "answer": "D"}), r"bad.jsonl:2: field 'answer': D not among the options ABC"),
    (json.dumps({**GOOD, "answer": "  "}), r"bad.jsonl:2: field 'answer': empty"),
    (json.dumps({**GOOD, "instruction": ""}), r"bad.jsonl:2: field 'instruction': empty"),
    (json.dumps({**GOOD, "answer": "A, C"}), r"bad.jsonl:2: field 'answer': an mcqu row has exactly one correct letter"),
    (json.dumps({**GOOD, "type": "mcq", "answer": "A et C"}), r"bad.jsonl:2: field 'answer': 'A et C' is not letters"),
    (json.dumps({**GOOD, "context": "Pas d'options."}), r"bad.jsonl:2: field 'context': a mcqu row needs at least two options"),
    (json.dumps({**GOOD, "answer": 2}), r"bad.jsonl:2: field 'answer': expected a string, got int"),
]


@pytest.mark.parametrize("text,message", BAD_ROWS)
def test_a_bad_training_row_stops_the_run_with_one_line_and_no_success(tmp_path, smoke_cfg, text, message):
    cfg = smoke_cfg(f"data.sources.native.files=[{_bad_jsonl(tmp_path, text)}]")
    from medinject.run import run

    with pytest.raises(UserError, match=message) as err:
        run(cfg)
    assert "\n" not in str(err.value)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    assert not (out / "manifest.json").exists() and not (out / "adapter").exists()


BAD_CONFIGS = [
    (["mix.budget=0"], r"mix.budget: equal_budget needs a positive budget, got 0"),
    (["mix.budget=-5"], r"mix.budget: equal_budget needs a positive budget, got -5"),
    (["mix.budget=100000"], r"mix.budget: source 'native' has 155 training rows, 99845 short of its equal share of 100000"),
    (["data=native+synthetic", "mix=weighted", "mix.weights={native:0.5,synthetic:0.4}"], r"mix.weights: weights must sum to 1, they sum to 0.9"),
    (["data=native+synthetic", "mix=weighted", "mix.weights={native:0.5,other:0.5}"], r"mix.weights: needs exactly the sources native, synthetic"),
    (["data=native+synthetic", "mix=weighted", "mix.weights={native:1.5,synthetic:-0.5}"], r"mix.weights: weights must not be negative"),
    (["mix=weighted", "mix.weights={native:1.0}", "mix.budget=400"], r"source 'native' has 155 training rows, 245 short of its weighted share of 400"),
    (["data.sources.native.origin=null"], r"data.sources.native.origin: a training source needs an origin"),
    (["paths.medinjection=/nonexistent/medinjection"], r"paths.medinjection: /nonexistent/medinjection is not a folder"),
    (["data.sources.native.format=medinjection_all"], r"data.sources.native: this format reads from paths.medinjection, which is not set"),
    (["data.sources.native.format=hub"], r"data.sources.native.hub_id: format hub needs a dataset id"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_data_settings_are_one_line_errors(tmp_path, overrides, message):
    cfg = compose_cfg(*overrides, f"paths.cache_dir={tmp_path}/cache")
    with pytest.raises(UserError, match=message) as err:
        prepare_data(DataSettings.of(cfg))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "selections").exists() or not any((tmp_path / "cache" / "selections").iterdir())


def test_a_data_config_naming_an_unknown_source_fails_at_compose_time(tmp_path):
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "data" / "native+forum.yaml").write_text("defaults:\n  - /source@sources.forum: forum\nname: native+forum\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="source/forum"):
            compose("train", overrides=["data=native+forum"])


def test_empty_split_and_empty_folder_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"^e: no usable train row in .*empty.jsonl$"):
        load_source(*_source(origin="native", format="jsonl", files=[str(tmp_path / "empty.jsonl")]), "e")
    (tmp_path / "void").mkdir()
    with pytest.raises(UserError, match=r"^v.files: no .jsonl/.json file under .*void$"):
        load_source(*_source(origin="native", format="jsonl", files=[str(tmp_path / "void")]), "v")
    (tmp_path / "Native" / "Train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no mcqu/mcq/oeq JSON files under .*Native/Train"):
        load_source(*_source(tmp_path, origin="native", format="auto", subset="Native"), "s")


def test_a_broken_json_file_names_the_file_line_and_column(tmp_path):
    (tmp_path / "Native" / "Train" / "mcq").mkdir(parents=True)
    (tmp_path / "Native" / "Train" / "mcq" / "mcq_train.json").write_text('[{"instruction": "x",\n oops]')
    with pytest.raises(UserError, match=r"mcq_train.json: not valid JSON \(.* at line 2 column 2\)"):
        load_source(*_source(tmp_path, origin="native", format="auto", subset="Native"), "s")


def test_skip_mode_drops_bad_rows_and_counts_them_in_the_manifest(tmp_path):
    good = _rows("native")
    lines = [json.dumps(r, ensure_ascii=False) for r in good] + [json.dumps({**GOOD, "answer": "Z"}), "{oops", json.dumps({**GOOD, "answer": "Z"})]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = compose_cfg(f"data.sources.native.files=[{tmp_path}/mixed.jsonl]", "data.on_bad_row=skip", f"paths.cache_dir={tmp_path}/cache")
    manifest = prepare_data(DataSettings.of(cfg)).manifest
    skipped = manifest["sources"]["native"]["skipped_bad_rows"]
    assert skipped["field 'answer': Z not among the options ABC"] == 2
    assert sum(skipped.values()) == 3
    assert manifest["sources"]["native"]["rows"] == len(good)


# ---- contamination ----


def test_planted_test_questions_are_found_dropped_and_counted(tmp_path):
    test_items = _rows("translated", "test")
    exact = test_items[0]
    near = dict(test_items[5])
    near["instruction"] = near["instruction"] + " Justifiez."  # reworded slightly
    near["context"] = near["context"].replace("Un ", "Une personne, un ", 1)
    planted = [{**exact, "origin": "native"}, {**near, "origin": "native"}]
    rows = _rows("native") + planted
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    overrides = [f"data.sources.native.files=[{tmp_path}/train.jsonl]", f"paths.cache_dir={tmp_path}/cache", "mix=natural"]
    prepared = prepare_data(DataSettings.of(compose_cfg(*overrides)))
    report = prepared.contamination
    native = next(s for s in report["sources"] if s["source"] == "native")
    assert native["contaminated"] == 2 and report["dropped"] == 2
    assert native["by_test_set"]["translated"]["exact"] == 1 and native["by_test_set"]["translated"]["near"] == 1
    assert len(prepared.examples) == len(_rows("native"))
    assert prepared.manifest["contaminated_rows"] == {"native": 2}
    kept = prepare_data(DataSettings.of(compose_cfg(*overrides, "data.decontaminate=false")))
    assert len(kept.examples) == len(rows) and kept.contamination["action"] == "reported only"


def test_bundled_sample_is_clean():
    prepared = prepare_data(DataSettings.of(compose_cfg("data=native+synthetic+translated", "mix=natural", "data.cache=false")))
    assert prepared.contamination["dropped"] == 0


# ---- mixing over the seven configs, determinism ----


def test_equal_budget_gives_every_one_of_the_seven_configs_exactly_n(tmp_path):
    for name in [n for n in DATA_CONFIGS if n != "base"]:  # base trains on nothing (tests/test_base_model.py)
        prepared = prepare_data(DataSettings.of(compose_cfg(f"data={name}", "mix.budget=100", "data.cache=false", "seed=5")))
        per_source = {o: sum(c.values()) for o, c in prepared.manifest["counts"].items()}
        assert sum(per_source.values()) == 100, name
        k = len(name.split("+"))
        assert set(per_source) == set(name.split("+")) and all(abs(n - 100 / k) <= 1 for n in per_source.values())
        again = prepare_data(DataSettings.of(compose_cfg(f"data={name}", "mix.budget=100", "data.cache=false", "seed=5")))
        assert again.manifest["selected_ids_sha256"] == prepared.manifest["selected_ids_sha256"]


def test_task_balance_balanced_splits_each_share_across_tasks():
    prepared = prepare_data(DataSettings.of(compose_cfg("data=native+synthetic", "mix.budget=90", "mix.task_balance=balanced", "data.cache=false")))
    assert prepared.manifest["counts"] == {"native": {"mcq": 15, "mcqu": 15, "oeq": 15}, "synthetic": {"mcq": 15, "mcqu": 15, "oeq": 15}}


def test_weighted_mix_follows_weights_and_repeats_only_when_allowed():
    cfg = compose_cfg("data=native+synthetic", "mix=weighted", "mix.weights={native:0.7,synthetic:0.3}", "mix.budget=101", "data.cache=false")
    counts = {o: sum(c.values()) for o, c in prepare_data(DataSettings.of(cfg)).manifest["counts"].items()}
    assert counts == {"native": 71, "synthetic": 30}
    cfg = compose_cfg("mix=weighted", "mix.weights={native:1.0}", "mix.budget=400", "mix.allow_repeat=true", "data.cache=false")
    examples = prepare_data(DataSettings.of(cfg)).examples
    assert len(examples) == 400 and len({e.id for e in examples}) == 155


# ---- caches ----


def test_selection_and_token_caches_are_keyed_by_content(tmp_path):
    from medinject.train.datamodule import tokenized_dataset
    from medinject.model.load import load_tokenizer_and_model

    source = tmp_path / "native.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows("native")), encoding="utf-8")
    overrides = [f"data.sources.native.files=[{source}]", f"paths.cache_dir={tmp_path}/cache", "mix.budget=60"]
    cfg = compose_cfg(*overrides)
    tokenizer, _ = load_tokenizer_and_model(compose_cfg().model, compose_cfg("adapter=lora").adapter)

    first = prepare_data(DataSettings.of(cfg))
    _, _, hit = tokenized_dataset(first.examples, first.manifest["files"], tokenizer, cfg)
    assert not hit
    again = prepare_data(DataSettings.of(cfg))
    assert again.manifest == first.manifest
    _, _, hit = tokenized_dataset(again.examples, again.manifest["files"], tokenizer, cfg)
    assert hit

    # one byte changed in a row the mix may not even select: a new selection and a new token set
    text = source.read_text(encoding="utf-8")
    source.write_text(text.replace("?", " ?", 1), encoding="utf-8")
    edited = prepare_data(DataSettings.of(cfg))
    assert edited.manifest["files"] != first.manifest["files"]
    _, _, hit = tokenized_dataset(edited.examples, edited.manifest["files"], tokenizer, cfg)
    assert not hit

    # another tokenizer (a copy with one more token) must not reuse the token cache
    tokenizer.add_tokens(["<|médical|>"])
    _, _, hit = tokenized_dataset(edited.examples, edited.manifest["files"], tokenizer, cfg)
    assert not hit


def test_prepare_cli_writes_the_manifest(tmp_path):
    out = tmp_path / "prep"
    result = subprocess.run(
        [sys.executable, "-m", "medinject.data.prepare", "data=native+translated", "mix.budget=30", "seed=3", f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"].keys() == {"native", "translated"} and manifest["n_examples"] == 30
    assert manifest["seed"] == 3 and manifest["mix"]["strategy"] == "equal_budget"
    assert len(manifest["selected_ids_sha256"]) == 64
    assert all(len(h) == 64 for h in manifest["files"].values()) and len(manifest["files"]) >= 4
    assert (out / "contamination.json").is_file()


def test_a_user_test_set_in_an_eval_config_is_loaded_and_evaluated_per_task(tmp_path):
    import shutil

    from hydra import compose, initialize_config_dir

    from medinject.eval.runner import eval_items

    items = [{"messages": [{"role": "user", "content": f"Question {i} ?\nA. x\nB. y"}], "classes": ["A", "B"], "answer": "AB"[i % 2]} for i in range(4)]
    (tmp_path / "mine.json").write_text(json.dumps(items), encoding="utf-8")
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "eval" / "with_mine.yaml").write_text(
        f"defaults: [default]\nname: with_mine\ntest_sets:\n  mine: {{format: chat_json, split: test, files: [{tmp_path}/mine.json]}}\n"
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["eval=with_mine", "eval.tasks=[mcqu]", f"paths.cache_dir={tmp_path}/cache", "paths.output_dir=/tmp/unused"])
    prepared = prepare_data(DataSettings.of(cfg))
    assert len(prepared.test_rows["mine"]) == 4
    assert [r.answer for r in eval_items(cfg, prepared.test_rows)["mine"]["mcqu"]] == ["A", "B", "A", "B"]
