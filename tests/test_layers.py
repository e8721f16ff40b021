"""The architecture, checked by real tools: the stage layering contract (import-linter, configured in
pyproject.toml) and no import cycle anywhere in the package (grimp, imports inside functions included)."""

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_stages_import_only_downwards():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_cycle():
    graph = grimp.build_graph("medinject")
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append(" -> ".join([module, *graph.find_shortest_chain(importer=imported, imported=module)]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_sees_a_cycle():
    graph = grimp.build_graph("medinject")
    graph.add_import(importer="medinject.config", imported="medinject.run")  # what a careless import would do
    assert graph.chain_exists(importer="medinject.run", imported="medinject.config")
    assert graph.chain_exists(importer="medinject.config", imported="medinject.run")


def test_each_stage_names_only_the_config_parts_it_reads():
    """The stage functions `run._execute` calls take their own typed part of the config, never the
    whole run config, and return a typed result."""
    import typing

    from medinject.config import AdapterConfig, DataSettings, EvalSettings, ModelConfig, TrainerConfig, TrainSettings
    from medinject.data.prepare import PreparedData, prepare_data
    from medinject.eval.runner import Evaluation, check_evaluation, eval_items, evaluate_model, evaluation_record
    from medinject.model.load import LoadedModel, load_model
    from medinject.train.fit import Fitted, fit

    def hints(fn):
        return typing.get_type_hints(fn)

    assert hints(prepare_data)["cfg"] is DataSettings and hints(prepare_data)["return"] is PreparedData
    assert [hints(load_model)[p] for p in ("model", "adapter", "trainer")] == [ModelConfig, AdapterConfig, TrainerConfig]
    assert hints(load_model)["return"] is LoadedModel
    for fn in (eval_items, check_evaluation, evaluation_record, evaluate_model):
        assert hints(fn)["cfg"] is EvalSettings, fn.__name__
    assert hints(evaluate_model)["return"] is Evaluation
    assert hints(fit)["cfg"] is TrainSettings and hints(fit)["return"] is Fitted
    # the settings hold nothing else: a stage that reached for another part would fail
    from conftest import compose_cfg

    settings = EvalSettings.of(compose_cfg())
    assert not hasattr(settings, "trainer") and not hasattr(DataSettings.of(compose_cfg()), "optim")
    assert not hasattr(TrainSettings.of(compose_cfg()), "eval")
