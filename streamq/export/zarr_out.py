"""The Zarr export at OUT: what an earlier run left there, and making or reopening the group.

An OUT that holds anything but a streamq Zarr export is refused, even with ``overwrite``
(:func:`read_existing`); one that holds another export is refused with what differs
(:func:`difference`) unless ``overwrite``, which replaces it (:func:`create_export`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import zarr

from streamq.errors import StoreExistsError
from streamq.export.common import MANIFEST
from streamq.export.zarr_plan import ATTR, FORMAT_VERSION
from streamq.fs import Location, storage_errors
from streamq.store import zarr_root

__all__ = ["create_export", "difference", "open_export", "read_existing"]


def read_existing(out_loc: Location) -> dict[str, Any] | None:
    """The export attributes at ``out_loc``; None when there is nothing there. Anything
    else than a streamq Zarr export is refused (never replaced, even with ``overwrite``)."""
    # zarr's temporary files (``*.partial``) are what a kill while creating the group leaves
    entries = [e for e in out_loc.listdir() if not e.endswith(".partial")]
    if not entries:
        return None
    meta: Any = None
    if "zarr.json" in entries:
        try:
            meta = json.loads(out_loc.join("zarr.json").read_bytes())
        except (OSError, ValueError):
            meta = None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    attrs = attrs if isinstance(attrs, dict) else {}
    if isinstance(attrs.get(ATTR), dict):
        return dict(attrs[ATTR])
    if "streamq" in attrs:
        what = "a streamq store"
    elif meta is not None:
        what = "another Zarr store"
    elif MANIFEST in entries:
        what = "a streamq image export"
    else:
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        what = f"{len(entries)} entries: {shown}"
    raise StoreExistsError(f"{out_loc.url} exists and is not a streamq Zarr export (it holds "
                           f"{what}); choose another OUT (--overwrite replaces only an earlier "
                           "export)")


def difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why an existing export is another one, for the refusal."""
    o_src, n_src = old.get("store") or {}, new["store"]
    key = ("source_fingerprint", "settings_fingerprint")
    if [o_src.get(k) for k in key] != [n_src.get(k) for k in key]:
        return f"of another store ({o_src.get('path')})"
    o_res = [(r.get("group"), r.get("fit_fingerprint")) for r in old.get("results") or []]
    n_res = [(r["group"], r["fit_fingerprint"]) for r in new["results"]]
    if [g for g, _ in o_res] != [g for g, _ in n_res]:
        shown = ", ".join(g or "shared palette" for g, _ in o_res) or "none"
        return f"of other results ({shown})"
    if o_res != n_res:
        return (f"made with another fit (fingerprint {', '.join(str(f) for _, f in o_res)}; the "
                f"store's is now {', '.join(f for _, f in n_res)})")
    if (old.get("selection") or {}).get("ids_sha256") != new["selection"]["ids_sha256"]:
        return f"of another selection ({old.get('n_images')} images)"
    if old.get("format_version") != FORMAT_VERSION:
        return f"of format_version {old.get('format_version')}"
    return f"with another chunk layout ({old.get('chunk_pixels')} pixels per chunk)"


def create_export(out_loc: Location, fp: str, replace: bool) -> zarr.Group:
    """A new, empty export group at ``out_loc``, its plan not yet written (state planning).

    When replacing an earlier export, everything but its ``zarr.json`` goes first: a kill
    meanwhile leaves a recognisable export (refused or replaced again), never stray arrays
    without it.
    """
    if replace:
        if out_loc.is_local:
            for name in os.listdir(out_loc.url):
                path = os.path.join(out_loc.url, name)
                if name == "zarr.json":
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        else:
            root = out_loc.join("zarr.json").url
            out_loc.remove_files(sorted(k for k in out_loc.object_sizes() if k != root))
    with storage_errors(out_loc):
        return zarr.create_group(zarr_root(out_loc), overwrite=True, zarr_format=3, attributes={
            ATTR: {"format_version": FORMAT_VERSION, "state": "planning", "fingerprint": fp}})


def open_export(out_loc: Location) -> zarr.Group:
    with storage_errors(out_loc):
        return zarr.open_group(zarr_root(out_loc), mode="r+", zarr_format=3)
