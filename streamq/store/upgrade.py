"""``streamq upgrade``: bring a store of an older format to the current one, in place.

Store format 3 spells centres ``centers`` in every name on disk, as scikit-learn does
(``cluster_centers_``); formats 1 and 2 (2: a store with alpha) spelled them ``center``. The
upgrade renames, and recomputes nothing:

- ``fit/palette/center_{j}`` -> ``fit/palette/centers_{j}``;
- ``per_image/k{K}/center`` -> ``per_image/k{K}/centers``;
- the fit checkpoint's key ``minibatch_centres`` -> ``minibatch_centers``.

(:data:`RENAMES` holds the array renames; :mod:`streamq.store.results` the current names.) Every
other command refuses a store of an older format in one line that names this one
(:meth:`streamq.store.Store.open`; ``ingest --overwrite`` replaces it instead).

**Resumable.** The upgrade holds the store's lock and takes steps that each leave the store
in a state a rerun finishes from, wherever a kill stops it:

1. copy array ``old`` to ``new`` (``zarr.from_array``: the same metadata, chunks, codecs and
   values), made durable; a rerun that finds ``old`` still an array copies it again,
   replacing a partial copy;
2. remove ``old``'s ``zarr.json``: ``old`` is no longer an array, and ``new`` is whole;
3. remove the rest of ``old`` (its chunks); a rerun removes any left;
4. rename the fit checkpoint's key (one write of its one key);
5. last, write the new format version (one write of ``zarr.json``): a store reads as
   format 3 only once every rename is done.

Works the same on a local folder and on an object store (``s3://``: a copy is a PUT of each
key, a removal a DELETE; there is no rename of a prefix).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zarr

from streamq import durable
from streamq.config import StreamQConfig, parse_config
from streamq.errors import StoreLayoutError
from streamq.fs import check_access
from streamq.lock import check_writer, store_lock
from streamq.store.arrays import zarr_root
from streamq.store.checkpoint import decode_state, write_checkpoint
from streamq.store.layout import (
    FORMAT_VERSION,
    READ_VERSIONS,
    UPGRADABLE_VERSIONS,
    Store,
    StoreTarget,
    store_location,
)
from streamq.store.names import CHECKPOINT, FIT_PALETTE, PER_IMAGE

__all__ = ["CHECKPOINT_RENAMES", "RENAMES", "UpgradeSummary", "rename_array", "upgrade"]

#: ``{regular expression of an array name in a store of format 1 or 2: its name in format 3}``
#: (``re`` replacement syntax; the expression matches the whole name).
RENAMES: dict[str, str] = {
    r"fit/palette/center_(\d)": r"fit/palette/centers_\1",
    r"per_image/k(\d+)/center": r"per_image/k\1/centers",
}
#: ``{old key: new key}`` of the fit checkpoint (``fit/checkpoint``, while a fit is unfinished).
CHECKPOINT_RENAMES: dict[str, str] = {"minibatch_centres": "minibatch_centers"}


@dataclass
class UpgradeSummary:
    """What :func:`upgrade` did; ``str()`` is the line the CLI prints."""

    store: str
    from_version: int
    to_version: int
    renamed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "from_version": self.from_version,
                "to_version": self.to_version, "renamed": [list(r) for r in self.renamed]}

    def __str__(self) -> str:
        if self.from_version == self.to_version:
            return f"{self.store} is already at store format {self.to_version}"
        return (f"upgraded {self.store} from store format {self.from_version} to "
                f"{self.to_version}: {len(self.renamed)} arrays renamed (nothing recomputed)")


def renamed(name: str) -> str | None:
    """The format-3 name of array ``name`` of an older store, or None when it keeps its name."""
    for old, new in RENAMES.items():
        if re.fullmatch(old, name):
            return re.sub(f"^(?:{old})$", new, name)
    return None


def _folders(st: Store) -> list[str]:
    """The folders (groups) that may hold an array to rename."""
    per_image = [f"{PER_IMAGE}/{d}" for d in st.location.join(PER_IMAGE).listdir()
                 if re.fullmatch(r"k\d+", d)]
    return [FIT_PALETTE, *per_image]


def renames_left(st: Store) -> list[tuple[str, str]]:
    """``(old, new)`` of every array of ``st`` still under its old name, or whose old name
    still holds files (a rename stopped after step 2)."""
    out = []
    for folder in _folders(st):
        for entry in st.location.join(*folder.split("/")).listdir():
            new = renamed(f"{folder}/{entry}")
            if new is not None:
                out.append((f"{folder}/{entry}", new))
    return out


def rename_array(st: Store, old: str, new: str, step: int = 3) -> None:
    """Rename array ``old`` of ``st`` to ``new``, up to step ``step`` of the module docstring
    (1: copied; 2: ``old``'s metadata removed; 3: done). Each step may be repeated: run
    again, it finishes what an earlier run left."""
    check_writer()
    if st.has(old):
        zarr.from_array(zarr_root(st.location), data=st.array(old), name=new, overwrite=True)
        st.sync(new)
        if step < 2:
            return
        st.location.join(*old.split("/"), "zarr.json").remove()
        _sync_removed(st, f"{old}/zarr.json")
    if step >= 3 and st.location.join(*old.split("/")).exists():
        del st.group[old]  # its chunks: a prefix that is no longer an array
        _sync_removed(st, old)


def _sync_removed(st: Store, name: str) -> None:
    """Make the removal of file or folder ``name`` durable: fsync the folders from its own up
    to the store (local stores; a DELETE that returned is done)."""
    if st.location.is_local:
        root = st.location.url
        durable.sync_files([os.path.join(root, *name.split("/"))], up_to=root)


def _rename_checkpoint_keys(st: Store) -> bool:
    """Rename the keys of an unfinished fit's checkpoint; whether it held one."""
    if not st.has(CHECKPOINT):
        return False
    text = str(st.array(CHECKPOINT)[0])
    if not text:
        return False
    state = decode_state(text)
    if not set(CHECKPOINT_RENAMES) & set(state):
        return False
    write_checkpoint(st, CHECKPOINT, {CHECKPOINT_RENAMES.get(k, k): v for k, v in state.items()})
    return True


def upgrade(store: StoreTarget, *, config: StreamQConfig | Mapping[str, Any] | None = None,
            storage_options: Mapping[str, Any] | None = None) -> UpgradeSummary:
    """Rename the arrays of a store of an older format in place and set the current format.

    Parameters
    ----------
    store : str, path or Location
        A streamq store of any format this streamq reads or upgrades (a local folder or a
        URL such as ``s3://bucket/faces.zarr``).
    config : StreamQConfig or dict, optional
        Its ``lock`` and ``storage_options`` keys are used.
    storage_options : dict, optional
        Options of the store's filesystem when it is a URL; default: ``config``'s.

    Returns
    -------
    UpgradeSummary
        The versions before and after and the arrays renamed; a store already current is
        left untouched (``from_version == to_version``).

    Resumable: killed at any point, the same call finishes the upgrade (see the module
    docstring).
    """
    cfg = parse_config(config)
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="upgrade", config=cfg.lock):
        st = Store.open(loc, mode="r+", versions=READ_VERSIONS + UPGRADABLE_VERSIONS)
        meta = st.section("streamq")
        version = int(meta["format_version"])
        if version == FORMAT_VERSION:
            return UpgradeSummary(st.path, version, version)
        if version not in UPGRADABLE_VERSIONS:  # pragma: no cover  (Store.open refused it)
            raise StoreLayoutError(f"{st.path}: store format {version} cannot be upgraded")
        done = renames_left(st)
        for old, new in done:
            rename_array(st, old, new)
        _rename_checkpoint_keys(st)
        st.set_section("streamq", {**meta, "format_version": FORMAT_VERSION})
        return UpgradeSummary(st.path, version, FORMAT_VERSION, done)
