"""The tasks of a Zarr export: each fills one chunk (shard) of one exported labels array.

A task reads the ranges of the store's labels that fill its chunk (:func:`chunk_segments`),
checks that they are still those the export was planned from (readers take no lock: a
quantize or refit may run beside it), writes its chunk, then its completion record; a chunk an
earlier run recorded is read back and kept when its checksum matches (:func:`copy_task`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamq.durable import checksum
from streamq.errors import LabelsChangedError, StreamQError
from streamq.export.common import labels_changed_message
from streamq.fs import Location, storage_errors
from streamq.store import open_array, write_record, write_rows
from streamq.store.results import read_identity

__all__ = ["chunk_segments", "copy_task"]


def chunk_segments(src_offsets: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, lo: int,
                   hi: int) -> tuple[list[list[int]], int]:
    """Source ranges ``[start, stop, output position]`` that fill output pixels ``[lo, hi)``
    (neighbouring images merged into one read), and how many images they touch."""
    ends = offsets + sizes
    i0 = int(np.searchsorted(ends, lo, side="right"))
    i1 = int(np.searchsorted(offsets, hi, side="left"))
    segs: list[list[int]] = []
    for i in range(i0, i1):
        a, b = max(lo, int(offsets[i])), min(hi, int(ends[i]))
        s = int(src_offsets[i]) + a - int(offsets[i])
        if segs and segs[-1][1] == s:  # the output is contiguous: merge when the source is
            segs[-1][1] = s + b - a
        else:
            segs.append([s, s + b - a, a])
    return segs, i1 - i0


def _check_source(args: dict[str, Any]) -> None:
    """Stop unless the store's labels are still those the export was planned from."""
    if args.get("identity") is not None and \
            read_identity(args["store"], args.get("per_image")) != args["identity"]:
        raise LabelsChangedError(labels_changed_message(args["store"].url))


def _chunk_ok(out: Location, args: dict[str, Any]) -> bool:
    """Whether the chunk an earlier run recorded holds what its record says (its CRC-32; the
    export's fingerprint names the fit, and labels are a function of it): then the task has
    nothing to do."""
    expect = args["expect"]
    try:
        data = np.asarray(open_array(out, args["labels"])[args["lo"]:args["hi"]])
    except StreamQError:
        raise
    except Exception:  # noqa: BLE001  (a chunk that no longer decodes: torn, rewrite it)
        return False
    return "crc32" not in expect or checksum(data) == expect["crc32"]


def copy_task(args: dict[str, Any]) -> dict[str, Any]:
    """Fill one chunk of an exported labels array, then record it (its own chunk); a chunk
    recorded by an earlier run is read back and kept when its checksum matches."""
    out: Location = args["out"]
    with storage_errors(args["store"]), storage_errors(out):
        if args.get("expect") is not None and _chunk_ok(out, args):
            return {**args["expect"], "status": "verified"}
        try:
            src = open_array(args["store"], args["source"])
            lo, hi = args["lo"], args["hi"]
            dest = open_array(out, args["labels"], mode="r+")
            buf = np.zeros(hi - lo, dtype=dest.dtype)
            for s0, s1, o0 in args["segments"]:
                buf[o0 - lo:o0 - lo + s1 - s0] = src[s0:s1]
        except Exception:
            _check_source(args)  # replaced meanwhile: say so rather than what failed
            raise
        _check_source(args)  # what was read is what the export was planned from
        write_rows(out, args["labels"], dest, lo, hi, buf)  # durable before its record
        report = {"pixels": hi - lo, "images": args["n_images"], "crc32": checksum(buf)}
        write_record(out, args["records"], args["chunk_index"], report)
    return {**report, "status": "written"}
