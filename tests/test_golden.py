"""Every output of every stage, byte for byte as in ``tests/data/golden_outputs.json``.

The file was written by the streamq of the commit that added it (``tests/golden_outputs.py``
run as a script says how, and what is covered); this test runs the same stages again and
compares each digest, key by key. A failure names the differing keys, as
``part :: kind :: name`` (``shared :: store :: quantize/labels``, ``alpha :: png :: cut/la.png``,
``shared :: report :: samples``).

Two declared changes are allowed, and only these; the JSON itself is never regenerated for
a refactor:

- :data:`RENAMED`: arrays renamed on disk. Each key is a regular expression matched against
  the whole name of an array in a store or a ``--zarr`` export, its value the new name
  (``re`` replacement syntax), e.g. ``{r"per_image/k(\\d+)/center": r"per_image/k\\1/centers",
  r"fit/palette/center_(\\d)": r"fit/palette/centers_\\1"}``. The renamed array must hold the
  same data (the same digest).
- :data:`FORMAT_VERSION_CHANGES`: values that change because the store format version is
  bumped, by their key as a failure names it, e.g. ``{"shared :: format_version": 3,
  "alpha :: format_version": 3}``. Anything else that differs is a change of output.

An intended change of output (not a refactor) rewrites only the digests it changes, in a
commit that names them and says why. Done once: the alpha fit's Lloyd became the core's
(exact fixed-point sums), which moved the stored float centres of the alpha part by at most
4.6e-13 (``fit/palette/center_0..3``, ``fit/history/inertia`` and ``shift``, the ``--zarr``
export's ``centers``); its palettes, labels, errors and image files did not change. And a
second time: the exact phase's race ranks its starts once their centres settle, before a
fixed point (``streamq.fit.lloyd.RACE_TOL``), which changed the shared part's
``fit/starts`` records (the race's inertias and iteration counts, and a ``grid_done`` field
per start) and nothing else; the opaque reference of ``tests/test_alpha.py`` changed the same
way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from golden_outputs import PARTS, run_part

from streamq.store.upgrade import RENAMES

#: ``{regular expression of an old array name: new name}``: arrays renamed on disk. Store
#: format 3 spells centres ``centers`` (``streamq upgrade`` renames the same arrays).
RENAMED: dict[str, str] = dict(RENAMES)
#: ``{key: new value}``: what a bump of the store format version changes, by its key. Every
#: store is at format 3 (with or without alpha).
FORMAT_VERSION_CHANGES: dict[str, Any] = {
    f"{part} :: format_version": 3 for part in ("shared", "per_image_histogram", "given_palette",
                                                "alpha")}

SEP = " :: "
ARRAY_TABLES = ("store", "zarr_export")  # keys whose entries are named by an array's path


def flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"a :: b :: c": leaf}`` of nested dicts (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[SEP.join(path)] = value
    return out


def renamed(key: str, renames: dict[str, str]) -> str:
    """``key`` with the array name it ends in renamed as ``renames`` says."""
    parts = key.split(SEP)
    if len(parts) >= 2 and parts[-2] in ARRAY_TABLES:
        for old, new in renames.items():
            if re.fullmatch(old, parts[-1]):
                parts[-1] = re.sub(f"^(?:{old})$", new, parts[-1])
                break
    return SEP.join(parts)


def expected_outputs(renames: dict[str, str] | None = None,
                     changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The committed digests, flattened, with the declared renames and format changes
    (default: :data:`RENAMED`, :data:`FORMAT_VERSION_CHANGES`)."""
    renames = RENAMED if renames is None else renames
    changes = FORMAT_VERSION_CHANGES if changes is None else changes
    tree = json.loads((Path(__file__).parent / "data/golden_outputs.json").read_text())
    flat = {renamed(k, renames): v for k, v in flatten(tree).items()}
    unknown = set(changes) - set(flat)
    assert not unknown, f"FORMAT_VERSION_CHANGES names keys the golden file lacks: {sorted(unknown)}"
    return flat | changes


def differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """One line per key missing, added or different."""
    def short(v: Any) -> str:
        text = json.dumps(v, sort_keys=True)
        return text if len(text) <= 160 else text[:157] + "..."

    lines = [f"missing: {k}" for k in sorted(set(expected) - set(got))]
    lines += [f"unexpected: {k} = {short(got[k])}" for k in sorted(set(got) - set(expected))]
    lines += [f"differs: {k}: expected {short(expected[k])}, got {short(got[k])}"
              for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
    return lines


@pytest.mark.parametrize("part", list(PARTS))
def test_outputs_as_committed(tmp_path, part):
    """Palettes, labels, per-image errors, records, exported files, saved palettes, image
    groups, info and report sections of the stages run by ``golden_outputs.run_all``: the same
    as in ``tests/data/golden_outputs.json``. One part at a time (the parts are independent),
    so ``pytest -n`` runs them side by side; together they are every committed key."""
    expected = expected_outputs()
    assert {k.split(SEP, 1)[0] for k in expected} == set(PARTS)
    expected = {k: v for k, v in expected.items() if k.startswith(part + SEP)}
    got = flatten(json.loads(json.dumps({part: run_part(tmp_path, part)}, sort_keys=True)))
    diff = differences(expected, got)
    assert not diff, (f"{len(diff)} outputs differ from tests/data/golden_outputs.json "
                      "(see tests/test_golden.py for declared renames):\n  "
                      + "\n  ".join(diff[:40]) + ("\n  ..." if len(diff) > 40 else ""))


def test_renames_and_format_changes_apply():
    """A declared rename moves the committed digest to the new name; a format change replaces
    the committed value; neither touches anything else."""
    plain = expected_outputs({}, {})
    old = next(k for k in plain if k.startswith(f"shared{SEP}store{SEP}per_image/k"))
    moved = expected_outputs({r"per_image/k(\d+)/(.*)": r"per_image/k\1/moved_\2"},
                             {f"shared{SEP}format_version": 99})
    new = re.sub(r"per_image/k(\d+)/", r"per_image/k\1/moved_", old)
    assert old not in moved
    assert moved[new] == plain[old]
    assert moved[f"shared{SEP}format_version"] == 99
    assert plain[f"shared{SEP}format_version"] != 99

    def others(flat: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in flat.items()
                if "per_image/k" not in k and not k.endswith("format_version")}

    assert others(moved) == others(plain)
