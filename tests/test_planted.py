"""Known-answer data (medinject.data.planted) and the experiments built on it: the rows carry the
values the generator's parameters say, truth.json follows from those parameters, the data pass the
real data stage for every provenance configuration, and a shrunk `experiment=known_answer` sweep puts
truth.json and the truth check in its sweep directory."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import pytest
from medinject.config import DataSettings
from conftest import CONF, ROOT, compose_cfg
from hydra import compose, initialize_config_dir

from medinject.data import planted
from medinject.data.planted import (
    CHANCE,
    PlantedParams,
    ensure_planted,
    expected_by_config,
    generate,
    mixture_optimum,
    truth,
)
from medinject.data.prepare import prepare_data

CONFIGS = sorted(p.stem for p in (CONF / "data").glob("*.yaml") if p.stem != "base")  # the seven provenance configs


def _read(folder: Path, key: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{key}.jsonl").read_text(encoding="utf-8").splitlines()]


def _answer_text(row: dict) -> str:
    options = dict(line.split(". ", 1) for line in row["context"].splitlines())
    return options[row["answer"]]


def _marker(row: dict) -> str:
    words = row["instruction"].replace("?", " ").replace(".", " ").split()
    return next(w for w in words if len(w) == 6 and all(w[i:i + 2] in planted._SYLLABLES for i in (0, 2, 4)))


def test_the_rows_carry_the_planted_values():
    params = PlantedParams(facts=20, budget=60, transfer=0.6, wrong_rate=0.3)
    files = generate(params)
    test = {_marker(r): r for r in files["native/test/mcqu"]}
    assert len(test) == 3 * params.facts
    for source, share in (("native", 1.0), ("translated", params.transfer), ("synthetic", 1 - params.wrong_rate)):
        rows = files[f"{source}/train/mcqu"]
        assert len(rows) == params.facts * params.copies and len({r["instruction"] for r in rows}) == len(rows)  # distinct copies
        letters = {}
        for r in rows:
            letters.setdefault(_marker(r), set()).add(r["answer"])
        assert len(letters) == params.facts and all(len(v) == 1 for v in letters.values())  # one letter per fact
        right = sum(letters[m] == {test[m]["answer"]} for m in letters) / params.facts
        assert right == pytest.approx(share)
    native_phrasing = {r["instruction"] for r in files["native/test/mcqu"]}
    test_options = {_marker(r): r["context"] for r in files["native/test/mcqu"]}
    for source in planted.SOURCES:  # every source asks in the test's phrasing: only the letters differ
        assert any(r["instruction"] in native_phrasing for r in files[f"{source}/train/mcqu"])
    shifted = {_marker(r) for r in files["translated/train/mcqu"] if r["context"] != test_options[_marker(r)]}
    assert len(shifted) == round((1 - params.transfer) * params.facts)  # the shift: the options in another order
    assert {"mcqu", "mcq", "oeq"} == {k.rsplit("/", 1)[1] for k in files if k.startswith("synthetic/train/")}


def test_each_group_of_test_items_uses_every_letter_equally_often():
    """A learner's letter prior (one letter it favours for facts it never saw) then scores exactly chance
    on every group it was not taught, whatever the letter: no seed-to-seed noise from the prior."""
    params = PlantedParams(facts=20, budget=60)
    test = generate(params)["native/test/mcqu"]
    for g in range(len(planted.SOURCES)):
        group = test[g * params.facts:(g + 1) * params.facts]
        assert sorted(r["answer"] for r in group) == sorted(planted.LETTERS * (params.facts // len(planted.LETTERS)))


def test_flat_data_teach_nothing_the_test_asks_and_plant_no_difference():
    params = PlantedParams(flat=True)
    files = generate(params)
    asked = {_marker(r) for r in files["native/test/mcqu"]}
    for source in planted.SOURCES:
        assert not asked & {_marker(r) for r in files[f"{source}/train/mcqu"]}
    found = truth(params)
    assert found["flat"] is True and found["optimum"] is None
    assert set(found["expected"]) == set(CONFIGS) and set(found["expected"].values()) == {found["expected"]["native"]}
    assert found["expected"]["native"] == pytest.approx(CHANCE)


def test_expected_scores_and_the_optimum_follow_from_the_parameters():
    params = PlantedParams()  # 30 facts x 6 copies per source, budget 180
    k, n = params.facts * params.copies, params.budget
    seen_all = 1 - math.prod((k - n - j) / (k - j) for j in range(params.copies))
    seen_half = 1 - math.prod((k - n / 2 - j) / (k - j) for j in range(params.copies))
    expected = expected_by_config(params)
    assert set(expected) == set(CONFIGS)
    assert expected["native"] == pytest.approx((CHANCE + seen_all * (1 - CHANCE) + 2 * CHANCE) / 3)
    assert expected["native+translated"] == pytest.approx(
        (2 * CHANCE + seen_half * (1 - CHANCE) + seen_half * (params.transfer - CHANCE) + CHANCE) / 3)  # fmt: skip
    ranking = sorted(expected, key=lambda c: -expected[c])
    assert ranking[0].startswith("native+") and ranking[-1] == "translated"
    assert len({round(v, 6) for v in expected.values()}) == 7  # a strict ranking
    optimum = mixture_optimum(params)
    assert set(optimum) == set(planted.SOURCES) and sum(optimum.values()) == pytest.approx(1, abs=1e-3)
    assert min(optimum.values()) > 0.1  # interior
    score = lambda shares: planted.expected_score(params, {s: v * params.budget for s, v in shares.items()})
    grid = [dict(zip(planted.SOURCES, (a / 20, b / 20, 1 - (a + b) / 20))) for a in range(21) for b in range(21 - a)]
    assert all(score(optimum) >= score(p) - 1e-9 for p in grid)
    better_translation = expected_by_config(replace(params, transfer=0.9))
    assert better_translation["translated"] > expected["translated"] and better_translation["native"] == expected["native"]
    assert mixture_optimum(replace(params, transfer=0.9))["translated"] > optimum["translated"]


def test_one_row_per_fact_gives_a_kinked_surface_with_its_peak_where_every_source_is_used_up():
    """planted=sharp: a source's term rises linearly with its rows until they are all drawn, then stays
    flat, so the optimum is the point where each source is used up and a 0.1 step away costs the
    linear fall of the source it takes from."""
    params = PlantedParams(copies=1, facts_by_source={"native": 160, "synthetic": 120, "translated": 120}, budget=400,
                           transfer=0.8, wrong_rate=0.1)  # fmt: skip
    params.check()
    assert planted.seen(params, 60, "native") == pytest.approx(60 / 160) and planted.seen(params, 300, "native") == 1.0
    assert mixture_optimum(params) == {"native": 0.4, "synthetic": 0.3, "translated": 0.3}
    score = lambda n, s, t: planted.expected_score(params, {"native": n * 400, "synthetic": s * 400, "translated": t * 400})  # noqa: E731
    peak = score(0.4, 0.3, 0.3)
    assert peak == pytest.approx((160 * 1.0 + 120 * 0.9 + 120 * 0.8) / 400)  # every fact known, each at its source's value
    # a step of 0.1 (40 rows) away loses 40 of the donor's facts, each worth its value less chance; the receiver gains none
    assert peak - score(0.3, 0.4, 0.3) == pytest.approx(40 * (1.0 - CHANCE) / 400)
    assert peak - score(0.4, 0.4, 0.2) == pytest.approx(40 * (0.8 - CHANCE) / 400)
    rows = generate(params)
    assert [len(rows[f"{s}/train/mcqu"]) for s in planted.SOURCES] == [160, 120, 120] and len(rows["native/test/mcqu"]) == 400
    with pytest.raises(planted.UserError, match="planted.facts_by_source: one entry for each of native, synthetic, translated"):
        replace(params, facts_by_source={"native": 10, "synthetic": 10}).check()


def test_the_sharp_variant_composes_and_its_shares_past_a_source_repeat_rows(tmp_path):
    cfg = compose_cfg("experiment=known_answer_mixture", "planted=sharp", f"paths.cache_dir={tmp_path}",
                      "mix.weights={native:0.6,synthetic:0.2,translated:0.2}")  # fmt: skip
    assert cfg.planted.facts_by_source == {"native": 160, "synthetic": 120, "translated": 120} and cfg.mix.allow_repeat is True
    prepared = prepare_data(DataSettings.of(cfg))  # 240 native rows wanted from its 160: whole passes, then a seeded draw
    assert prepared.manifest["n_examples"] == 400 and sum(prepared.manifest["counts"]["native"].values()) == 240
    assert prepared.manifest["test_sets"]["native"]["by_type"]["mcqu"] == 400
    truth_file = json.loads((Path(cfg.paths.sample_data) / "truth.json").read_text())
    assert truth_file["optimum"] == {"native": 0.4, "synthetic": 0.3, "translated": 0.3}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_provenance_config_prepares_the_planted_data(tmp_path, config):
    cfg = compose_cfg("experiment=known_answer", f"data={config}", f"paths.cache_dir={tmp_path}")
    prepared = prepare_data(DataSettings.of(cfg))  # generates the data (absent) and reads it through the real data stage
    folder = Path(cfg.paths.sample_data)
    assert folder.parent == tmp_path / "planted" and (folder / "truth.json").is_file()
    assert prepared.manifest["n_examples"] == cfg.planted.budget == cfg.mix.budget
    assert set(prepared.manifest["counts"]) == set(config.split("+"))
    assert all(set(by_type) == {"mcqu"} for by_type in prepared.manifest["counts"].values())
    for name in ("native", "translated"):
        assert prepared.manifest["test_sets"][name]["by_type"]["mcqu"] == 3 * cfg.planted.facts
        assert set(prepared.manifest["test_sets"][name]["by_type"]) == {"mcqu", "mcq", "oeq"}


def test_changed_parameters_regenerate_the_data(tmp_path):
    cfg = compose_cfg("experiment=known_answer", f"paths.cache_dir={tmp_path}")
    folder = ensure_planted(cfg.planted, cfg.paths.sample_data)
    first = json.loads((folder / "truth.json").read_text())
    assert ensure_planted(cfg.planted, cfg.paths.sample_data) == folder and json.loads((folder / "truth.json").read_text()) == first
    changed = compose_cfg("experiment=known_answer", f"paths.cache_dir={tmp_path}", "planted.transfer=0.9")
    ensure_planted(changed.planted, changed.paths.sample_data)
    assert json.loads((folder / "truth.json").read_text())["params"]["transfer"] == 0.9


def test_the_experiments_and_the_flat_option_compose():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweep = compose("train", overrides=["experiment=known_answer"], return_hydra_config=True)
        flat = compose("train", overrides=["experiment=known_answer", "planted=flat"], return_hydra_config=True)
        mixture = compose("train", overrides=["experiment=known_answer_mixture"], return_hydra_config=True)
        sharp = compose("train", overrides=["experiment=known_answer_sharp"], return_hydra_config=True)
    assert sweep.hydra.sweeper.params.data == "glob(*,exclude=base)" and sweep.sweep_name == "known_answer_default"
    assert sweep.planted.flat is False and flat.planted.flat is True and flat.sweep_name == "known_answer_flat"
    assert sweep.paths.sample_data.endswith("/planted/default-s0") and flat.paths.sample_data.endswith("/planted/flat-s0")
    assert mixture.data.name == "native+synthetic+translated" and mixture.mix.strategy.value == "weighted"
    assert mixture.mix.budget == mixture.planted.budget and mixture.report.baseline is None
    assert len(mixture.hydra.sweeper.params["mix.weights"].split("},")) == 10
    assert mixture.hydra.sweeper.params.seed == "1,2"  # two seeds per point: seed noise can be estimated
    assert mixture.adapter.target_modules == sweep.adapter.target_modules and "lm_head" in sweep.adapter.target_modules
    # the sharp search: planted=sharp on the mixture search, 32 rows a step to memorise 400 one-row facts
    assert sharp.planted.name == "sharp" and sharp.sweep_name == "known_answer_mixture_sharp" and sharp.mix.budget == 400
    assert (sharp.trainer.batch_size, sharp.trainer.max_steps) == (32, 700) and mixture.trainer.batch_size == 8
    assert sharp.mix.allow_repeat is True and sharp.hydra.sweeper.params["mix.weights"] == mixture.hydra.sweeper.params["mix.weights"]


def test_the_command_line_writes_the_data_and_refuses_a_bad_budget(tmp_path, capsys):
    planted.main([str(tmp_path / "out"), "--seed", "3", "--facts", "12"])
    written = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert written["metric"] == "eval/native/mcqu/em_loglik" and written["params"]["seed"] == 3
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jsonl")) == sorted(
        f"{o}/{s}/{t}.jsonl" for o, s in (("native", "train"), ("synthetic", "train"), ("translated", "train"), ("native", "test"), ("translated", "test"))
        for t in ("mcqu", "mcq", "oeq"))  # fmt: skip
    planted.main([str(tmp_path / "uneven"), "--facts", "native=20,synthetic=15,translated=15", "--copies", "1"])
    uneven = json.loads((tmp_path / "uneven" / "truth.json").read_text())["params"]
    assert uneven["facts_by_source"] == {"native": 20, "synthetic": 15, "translated": 15} and uneven["budget"] == 20  # the largest source's rows
    with pytest.raises(SystemExit) as exit_info:
        planted.main([str(tmp_path / "bad"), "--budget", "0"])
    assert exit_info.value.code == 2 and "planted.budget: between 1 and facts x copies" in capsys.readouterr().err


@pytest.mark.slow
def test_a_shrunk_known_answer_sweep_checks_itself_against_the_truth(tmp_path):
    """Two configs, two seeds, few facts and steps: truth.json reaches the sweep dir and the report's
    truth check compares the found ranking and differences with it."""
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=known_answer", "data=native,translated", "seed=1,2", "logger=none",
         "planted.facts=4", "planted.copies=2", "planted.budget=8", "trainer.max_steps=30", "trainer.enable_progress_bar=false",
         f"paths.cache_dir={cache}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    planted_truth = json.loads((cache / "planted" / "default-s0" / "truth.json").read_text())
    assert json.loads((sweep / "truth.json").read_text()) == planted_truth
    check = json.loads((sweep / "truth_check.json").read_text())
    assert check["metric"] == "eval/native/mcqu/em_loglik" and check["configs"] == ["native", "translated"]
    assert check["ranking"]["planted"] == ["native", "translated"]
    [difference] = check["differences"]
    assert difference["config"] == "translated" and difference["planted"] == pytest.approx(
        planted_truth["expected"]["translated"] - planted_truth["expected"]["native"])  # fmt: skip
    assert "Planted truth" in (sweep / "report.html").read_text(encoding="utf-8")


def test_every_config_name_is_a_provenance_config():
    assert sorted("+".join(c) for r in (1, 2, 3) for c in combinations(planted.SOURCES, r)) == CONFIGS


def test_the_dry_run_estimate_counts_the_adapted_output_layer_as_peft_does():
    """The known-answer preset adapts lm_head: the dry run's memory estimate accepts it and counts its
    adapter's values as peft creates them."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from medinject.sweep.estimate import estimate_for_run

    cfg = compose_cfg("experiment=known_answer")
    spec = cfg.model.build_tiny
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                                         num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
                                         num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim, tie_word_embeddings=False))  # fmt: skip
    peft_model = get_peft_model(model, LoraConfig(r=cfg.adapter.r, lora_alpha=cfg.adapter.alpha, target_modules=list(cfg.adapter.target_modules)))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert estimate_for_run(cfg).adapter_weights == 4 * trainable
