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
