"""The package's layering holds: the import-linter contracts of ``pyproject.toml``
(``[tool.importlinter]``: cli -> pipeline/estimator -> stages -> store layer -> core, and no
stage importing another stage), checked on this tree and shown to catch a broken one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LINT = ("import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` (a fresh process: its own imports)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", _LINT], cwd=root, env=env, text=True,
                          capture_output=True, timeout=120)


def test_layers_and_stage_independence_hold():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_every_module_has_a_layer():
    """A new module must be placed in a layer, or the contracts would not look at it."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in cfg["contracts"] if c["id"] == "layers")["layers"]
    listed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    modules = {f"streamq.{p.stem if p.is_file() else p.name}"
               for p in (ROOT / "streamq").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert modules - listed == set(), "modules in no layer of [tool.importlinter]"


@pytest.mark.parametrize(("module", "imported", "message"), [
    ("report/page", "streamq.export", "streamq.report is not allowed to import streamq.export"),
    ("store/layout", "streamq.fit", "streamq.store is not allowed to import streamq.fit"),
    ("fit/alpha", "streamq.fit.driver",
     "streamq.fit.alpha is not allowed to import streamq.fit.driver"),
    ("ingest/sources", "streamq.ingest.files",
     "streamq.ingest.sources is not allowed to import streamq.ingest.files"),
    ("store/results", "streamq.store.overview",
     "streamq.store.results is not allowed to import streamq.store.overview"),
], ids=["stage-imports-stage", "store-imports-stage", "cycle-in-fit", "cycle-in-ingest",
        "cycle-in-the-store"])
def test_a_broken_layering_is_caught(tmp_path, module, imported, message):
    shutil.copytree(ROOT / "streamq", tmp_path / "streamq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "streamq" / f"{module}.py"
    assert path.is_file()
    with open(path, "a") as f:  # a function-level import
        f.write(f"\n\ndef _uses_it() -> None:\n    import {imported}  # noqa: F401\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert message in res.stdout, res.stdout


def _top_groups() -> set[str]:
    """The top-level names of a store (``pixels``, ``ingest``, ``fit``, ``per_image``, ...):
    the first part of every name :mod:`streamq.store.names` spells."""
    from streamq.store import names

    return {value.split("/")[0] for key, value in vars(names).items()
            if key.isupper() and isinstance(value, str)}


def _path_literals(source: str, groups: set[str]) -> list[tuple[int, str]]:
    """``(line, text)`` of every string in ``source`` (docstrings aside) that spells a path
    inside a store: a top-level name followed by ``/``, in a literal or at the start of an
    f-string."""
    import ast

    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and node.value.split("/")[0] in groups \
                and "/" in node.value:
            found.append((node.lineno, node.value))
    return found


def test_only_the_store_layer_spells_a_path_in_a_store():
    """Every array name and path is spelled once, in ``streamq.store.names``: a stage (or
    anything outside ``streamq/store/``) imports it instead of writing ``"quantize/labels"``."""
    groups = _top_groups()
    assert {"pixels", "ingest", "fit", "quantize", "per_image", "groups"} <= groups
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for path in sorted((ROOT / "streamq").rglob("*.py"))
             if "store" not in path.relative_to(ROOT / "streamq").parts[:1]
             for line, text in _path_literals(path.read_text(), groups)]
    assert found == [], "paths spelled outside streamq/store/names.py:\n" + "\n".join(found)


def test_a_path_spelled_in_a_stage_is_caught():
    source = ('"""Writes quantize/labels (a docstring may say so)."""\n'
              'LABELS = "quantize/labels"\n'
              'def palette(k):\n    return f"per_image/k{k}/palette"\n')
    assert _path_literals(source, _top_groups()) == [(2, "quantize/labels"), (4, "per_image/k")]


def test_the_lazy_top_level_names_are_the_public_ones():
    """``streamq`` imports its public names on first use: each name of ``__all__`` has a
    module to come from (and no other name does), and resolves there to itself, also after
    the subpackage of the same name (``streamq.fit``, ...) was imported."""
    code = ("import importlib, streamq\n"
            "assert set(streamq.__all__) == set(streamq._WHERE) | {'__version__'}\n"
            "for mod in ('streamq.fit', 'streamq.ingest', 'streamq.quantize', 'streamq.export',"
            " 'streamq.report'):\n"
            "    importlib.import_module(mod)\n"
            "for name in streamq.__all__:\n"
            "    value = getattr(streamq, name)\n"
            "    if name != '__version__':\n"
            "        assert value is getattr(importlib.import_module(streamq._WHERE[name]), name), name\n"
            "assert callable(streamq.fit) and callable(streamq.report)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
