"""lm-evaluation-harness on medinject's test sets: the task folder of `python -m medinject.eval.lm_eval_tasks`,
run by the real lm-eval on a tiny trained QLoRA run handed over as the 4-bit model object, agrees with
medinject's `em_loglik` on every mcqu item of both protocols; the released generate task reads the same
letters as medinject's greedy decoding."""

import json
import math
import subprocess
import sys
from pathlib import Path

import lm_eval  # the dev extra (pyproject.toml pins it): make test installs it
import pytest

from conftest import ROOT, cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lm_eval") / "run"
    result = subprocess.run(
        [sys.executable, "train.py", "experiment=smoke", "logger=none", "trainer.enable_progress_bar=false", "trainer.max_steps=4",
         "eval.limit=1", "eval.tasks=[mcqu]", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_lm_eval_agrees_with_em_loglik_on_every_mcqu_item_of_both_protocols(trained_run, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from omegaconf import OmegaConf, open_dict
    from peft import PeftModel

    from medinject.config import EvalProtocol, RunConfig, TaskType
    from medinject.data.prepare import load_test_sets
    from medinject.eval.lm_eval_tasks import write_tasks
    from medinject.eval.runner import Evaluator, eval_items
    from medinject.model.load import load_tokenizer_and_model

    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(trained_run / "config.yaml"))
    with open_dict(cfg):
        cfg.eval.tasks, cfg.eval.limit = [TaskType.mcqu], None  # every mcqu item of every test set
    tokenizer, base = load_tokenizer_and_model(cfg.model, cfg.adapter)
    assert cfg.adapter.quantization is not None  # the 4-bit base of a QLoRA run, as medinject evaluates it
    model = PeftModel.from_pretrained(base, str(trained_run / "adapter"))
    items = eval_items(cfg, {name: loaded.rows.examples() for name, loaded in load_test_sets(cfg.eval.test_sets, cfg.paths).items()})

    ours = {}
    for protocol in (EvalProtocol.strict, EvalProtocol.lenient):
        with open_dict(cfg):
            cfg.eval.protocol = protocol
        _, records = Evaluator(cfg).run(model, tokenizer, items)
        for record in records:
            ours[protocol.value, record["test_set"], record["id"]] = record
    names = write_tasks(cfg, tokenizer, items, tmp_path / "tasks")
    assert (tmp_path / "tasks" / "README.md").read_text().count("HFLM(pretrained=model") == 1

    wanted = [n for n in names if n.endswith("_mcqu_loglik")] + [n for n in names if n.endswith("_mcqu_generate")]
    assert len(wanted) == 2 * len(items) + len(items)  # both protocols' loglik tasks, the strict generate ones
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=wanted,
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks")), log_samples=True)
    compared = worst = 0
    for name in wanted:
        _, protocol, test_set, _task, kind = name.split("_")
        samples = out["samples"][name]
        assert len(samples) == len(items[test_set]["mcqu"])
        for sample in samples:
            doc, mine = sample["doc"], ours[protocol, test_set, sample["doc"]["id"]]
            if kind == "loglik":
                lls = [float(resp[0][0]) for resp in sample["resps"]]  # one (loglik, is_greedy) per option letter
                assert doc["options"][max(range(len(lls)), key=lls.__getitem__)] == mine["prediction_loglik"], (name, doc["id"])
                top = max(lls)
                softmax = [math.exp(ll - top) for ll in lls]
                for letter, p in zip(doc["options"], softmax):
                    worst = max(worst, abs(p / sum(softmax) - mine["option_probabilities"][letter]))
                compared += 1
            else:  # the strict (released) greedy generation (1 new token) read with the strict rule
                assert sample["filtered_resps"][0] == mine["prediction"], (name, doc["id"], sample["resps"], mine["output"])
                assert sample["em"] == float(mine["em"])
        if kind == "loglik":
            mean = sum(float(ours[protocol, test_set, s["doc"]["id"]]["em_loglik"]) for s in samples) / len(samples)
            assert out["results"][name]["acc,none"] == pytest.approx(mean)
    assert compared == 2 * sum(len(by_task["mcqu"]) for by_task in items.values()) and compared > 0
    assert worst < 1e-5, worst  # option probabilities: lm-eval's log-likelihoods, normalized, against medinject's first-step softmax
    print(json.dumps({"mcqu items compared": compared, "largest probability difference": worst}))


def test_the_task_folder_command_writes_every_task_and_says_where(tmp_path):
    result = cli("-m", "medinject.eval.lm_eval_tasks", str(tmp_path / "tasks"), "eval.limit=2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("12 lm-eval tasks -> ")  # 2 test sets x (2 tasks x 2 protocols + 2 strict generate tasks)
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    found = {name for name in manager.all_tasks if name.startswith("medinject_")}
    assert len(found) == 12 and "medinject_strict_native_mcq_generate" in found
    rows = [json.loads(line) for line in (tmp_path / "tasks" / "data" / "strict_native_mcq.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(row["gold"], list) and row["prompt"].endswith("assistant\n") for row in rows)


def test_lm_eval_s_own_loader_does_not_quantize_and_refuses_4bit_arguments():
    """Why the task folder's README says to hand HFLM the model object: from a path, lm-eval 0.4.13
    loads the tiny model unquantized, and the 4-bit arguments a user would try are refused."""
    import bitsandbytes as bnb
    from lm_eval.models.huggingface import HFLM
    from transformers import BitsAndBytesConfig

    from conftest import compose_cfg
    from medinject.model.tiny import ensure_tiny

    cfg = compose_cfg("experiment=smoke")
    path = str(ensure_tiny(cfg.model.path, cfg.model.build_tiny, cfg.model.model_max_length))
    plain = HFLM(pretrained=path, device="cpu")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.model.modules())
    with pytest.raises(TypeError, match="multiple values for keyword argument 'quantization_config'"):
        HFLM(pretrained=path, device="cpu", quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    with pytest.raises(TypeError, match="load_in_4bit"):
        HFLM(pretrained=path, device="cpu", load_in_4bit=True)
