"""The import order of ``vivit/`` is a contract: every module is in a layer, nothing imports upward, docs draw it."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"


def _make_layers():
    spec = importlib.util.spec_from_file_location("make_layers", ROOT / "docs" / "make_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the package at ``root`` first on the path, against ``root``'s pyproject.toml."""
    return subprocess.run([sys.executable, "-c", _LINT], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_every_module_of_the_package_is_in_a_layer():
    contracts = _make_layers().layer_contracts()
    for container, layers in contracts:
        folder = ROOT.joinpath(*container.split("."))
        layered = {m for layer in layers for m in layer}
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        packages = {p.parent.name for p in folder.glob("*/__init__.py")}
        assert modules | packages == layered, container
    # every role folder with more than one module has its own order
    folders = {p.parent for p in (ROOT / "vivit").glob("*/*.py") if p.stem != "__init__"}
    ordered = {ROOT.joinpath(*container.split(".")) for container, _ in contracts}
    assert {f for f in folders if len(list(f.glob("*.py"))) > 2} <= ordered


def test_the_roles_show_at_the_top():
    top = sorted(p.name for p in (ROOT / "vivit").glob("*.py"))
    assert len(top) <= 8, top
    assert {"model", "weights", "data", "tasks"} <= {p.name for p in (ROOT / "vivit").iterdir() if p.is_dir()}


def test_no_module_imports_one_above_it():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "vivit", tmp_path / "vivit", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    zoo = tmp_path / "vivit" / "zoo.py"
    zoo.write_text(zoo.read_text() + "\n\ndef _sneaky():\n    from vivit.weights.build import create_model\n\n"
                   "    return create_model\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "vivit.zoo -> vivit.weights.build" in proc.stdout


def test_the_package_never_imports_scripts_examples_benchmarks_or_tests():
    outside = {"examples", "benchmarks", "scripts", "tests", "docs"}
    for path in (ROOT / "vivit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not {n.split(".")[0] for n in names} & outside, f"{path} imports {names}"


def test_architecture_doc_draws_the_contract():
    make_layers = _make_layers()
    assert make_layers.render((ROOT / "docs" / "architecture.md").read_text()) == \
        (ROOT / "docs" / "architecture.md").read_text(), "docs/architecture.md is stale: run python docs/make_layers.py"
