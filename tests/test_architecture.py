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
    ("store", "streamq.fit", "streamq.store is not allowed to import streamq.fit"),
    ("fit/alpha", "streamq.fit.driver",
     "streamq.fit.alpha is not allowed to import streamq.fit.driver"),
], ids=["stage-imports-stage", "store-imports-stage", "cycle-in-a-family"])
def test_a_broken_layering_is_caught(tmp_path, module, imported, message):
    shutil.copytree(ROOT / "streamq", tmp_path / "streamq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "streamq" / f"{module}.py", "a") as f:  # a function-level import
        f.write(f"\n\ndef _uses_it() -> None:\n    import {imported}  # noqa: F401\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert message in res.stdout, res.stdout
