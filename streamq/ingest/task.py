"""The write task of an ingest (runs on a worker): pixels, colour counts, then the record.

A task owns whole chunks of ``pixels`` (and of ``alpha``). It decodes every image that
overlaps them (:func:`_write_task`; a Zarr image, or an image over ``max_pixels``, is read
in bands, :mod:`streamq.ingest.bands`), writes their pixels, the counts of the colours of those
pixels, and then its completion record, with checksums of both (:func:`store_task_pixels`,
also the end of an array ingest's task). A task recorded by an earlier run is checked
against its record's checksums (:func:`_verify_task`) and runs again only when they differ.

Transient faults of reads and writes are retried (:func:`streamq.faults.retrying`); one that
lasts fails the task, and so the stage, before its record is written.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from streamq.durable import checksum
from streamq.errors import StreamQError
from streamq.faults import is_transient, retrying
from streamq.ingest import bands
from streamq.kmeans.histogram import count_colors
from streamq.store import (
    ALPHA,
    PIXELS,
    TASK_COLORS,
    TASKS,
    open_array,
    write_rows,
    write_task_colors,
    write_task_report,
)

__all__ = ["put_pixels", "store_task_pixels"]


def _colors_checksum(codes: np.ndarray, counts: np.ndarray) -> int:
    return checksum(np.stack([np.asarray(codes, np.int64), np.asarray(counts, np.int64)]))


def _verify_task(args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The colour counts of a task recorded by an earlier run when its pixels and counts are
    still what its record says (checksums, plan), else None: the task runs again."""
    record, a, b = args["expect"], args["px_start"], args["px_stop"]
    if record.get("plan") != args.get("plan"):
        return None
    store, retry = args["store"], args.get("retry")
    try:
        if "crc32" in record:
            pixels = retrying(lambda: np.asarray(open_array(store, PIXELS)[a:b]), "read",
                              store.join(PIXELS).url, retry)
            if checksum(pixels) != record["crc32"]:
                return None
        n = int(record.get("colors", {}).get("distinct", 0))
        part = np.zeros((2, 0), np.int64)
        if n:
            part = retrying(lambda: np.asarray(open_array(store, TASK_COLORS)[args["task"], :, :n]),
                            "read", store.join(TASK_COLORS).url, retry)
        if "colors_crc32" in record and _colors_checksum(part[0], part[1]) != record["colors_crc32"]:
            return None
        if args.get("alpha"):  # the alpha rows: as recorded, or all 255 (no transparent pixel)
            alpha = retrying(lambda: np.asarray(open_array(store, ALPHA)[a:b]), "read",
                             store.join(ALPHA).url, retry)
            if checksum(alpha) != record.get("alpha_crc32", checksum(np.full(b - a, 255, np.uint8))):
                return None
    except StreamQError:
        raise
    except Exception:  # noqa: BLE001  (a chunk that no longer decodes: torn, rewrite it)
        return None
    return part[0], part[1]


def _write_task(args: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, str]:
    """Decode, write and count one task's pixels; return its record, colour counts and what
    it did (``ran``; for a task recorded by an earlier run, ``verified`` when its data
    matched its record's checksums, else ``redone``).

    Transient faults of reads and writes are retried (:func:`streamq.faults.retrying`); one
    that lasts fails the task, and so the stage, before its record is written."""
    a, b = args["px_start"], args["px_stop"]
    retry = args.get("retry")
    status = "ran"
    if args.get("expect") is not None:
        found = _verify_task(args)
        if found is not None:
            return args["expect"], found[0], found[1], "verified"
        status = "redone"
    buf = np.zeros((b - a, 3), dtype=np.uint8)
    keep_alpha = bool(args.get("alpha"))  # the plan made the alpha array
    abuf = np.full(b - a, 255, dtype=np.uint8) if keep_alpha else None
    with_alpha: list[int] = []  # images with a transparent pixel in this task's rows
    failed: list[list[Any]] = []
    stored: list[tuple[int, int]] = []  # rows of buf holding decoded pixels
    source, background = args["source"], tuple(args["background"])
    max_pixels = args["max_pixels"]
    # a Zarr image, or one over max_pixels (then in the plan only so), is read in bands
    decoded = source.pixels([item[1] for item in args["images"]
                             if not bands.is_banded(item[1], item[3], item[4], max_pixels)],
                            max_pixels, background, retry, alpha=keep_alpha)
    for image_id, rel, off, h, w in args["images"]:
        if bands.is_banded(rel, h, w, max_pixels):
            lo, hi = max(off, a), min(off + h * w, b)
            banded = retrying(functools.partial(_fill_bands, args, buf, abuf, rel, off, w, lo, hi),
                              "read", source.path(rel), retry)
            if isinstance(banded, str):  # any task meeting the failure records it
                failed.append([int(image_id), banded])
                continue
            stored.append((lo - a, hi - a))
            if banded:
                with_alpha.append(int(image_id))
            continue
        got = next(decoded)
        rgb, alpha = got if isinstance(got, tuple) else (got, None)
        if isinstance(rgb, np.ndarray) and rgb.shape != (h, w, 3):
            rgb = f"decoded size {rgb.shape[1]}x{rgb.shape[0]} differs from header {w}x{h}"
        if isinstance(rgb, str):
            if a <= off < b:  # the task holding the image's first pixel records it
                failed.append([int(image_id), rgb])
            continue
        lo, hi = max(off, a), min(off + h * w, b)
        stored.append((lo - a, hi - a))
        if put_pixels(buf, abuf, a, lo, hi, off, rgb, alpha):
            with_alpha.append(int(image_id))
    return (*store_task_pixels(args, buf, stored, failed, abuf, with_alpha), status)


def _fill_bands(args: dict[str, Any], buf: np.ndarray, abuf: np.ndarray | None, rel: str,
                off: int, w: int, lo: int, hi: int) -> bool | str:
    """Pixels ``[lo, hi)`` of an image read in bands (:mod:`streamq.ingest.bands`) into the task's
    buffers; return whether a stored alpha is below 255 there, or the reason it failed."""
    a = args["px_start"]
    transparent = False
    try:
        with bands.opened(args["source"], rel) as rows:
            for top, rgb, alpha in bands.read_rows(rows, (lo - off) // w, -(-(hi - off) // w),
                                                   abuf is not None, tuple(args["background"])):
                start = off + top * w  # the pixel index of the band's first pixel
                p, q = max(lo, start), min(hi, start + rgb.shape[0] * w)
                transparent = put_pixels(buf, abuf, a, p, q, start, rgb, alpha) or transparent
    except StreamQError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        return f"cannot read image in bands: {type(exc).__name__}: {exc}"
    return transparent


def put_pixels(buf: np.ndarray, abuf: np.ndarray | None, a: int, lo: int, hi: int, start: int,
               rgb: np.ndarray, alpha: np.ndarray | None) -> bool:
    """Copy pixels ``[lo, hi)`` (indices in ``pixels``) of an image whose ``rgb`` (and
    ``alpha``) begin at pixel ``start`` into a task's buffers ``buf`` (and ``abuf``, when the
    plan made the alpha array), which begin at pixel ``a``; return whether an alpha copied is
    below 255."""
    buf[lo - a: hi - a] = rgb.reshape(-1, 3)[lo - start: hi - start]
    if alpha is None or abuf is None:
        return False
    part = alpha.reshape(-1)[lo - start: hi - start]
    abuf[lo - a: hi - a] = part
    return len(part) > 0 and int(part.min()) < 255


def store_task_pixels(args: dict[str, Any], buf: np.ndarray, stored: list[tuple[int, int]],
                      failed: list[list[Any]], abuf: np.ndarray | None = None,
                      with_alpha: list[int] | None = None
                      ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The end of every ingest write task (files or arrays): write the task's pixels ``buf``
    (rows ``[lo, hi)`` of each of ``stored`` hold image pixels) and their alpha ``abuf`` when
    the plan made the alpha array (``with_alpha``: the images with a transparent pixel in
    these rows), then their colour counts, then the completion record naming the ``failed``
    images; return the record and counts."""
    a, b = args["px_start"], args["px_stop"]
    retry, store = args.get("retry"), args["store"]

    def write(fn: Any, name: str) -> None:
        retrying(fn, "write", store.join(name).url, retry, write=True)

    def write_pixels() -> None:
        # on disk before the record that vouches for it
        write_rows(store, PIXELS, open_array(store, PIXELS, mode="r+"), a, b, buf)

    write(write_pixels, PIXELS)
    if abuf is not None:  # chunks of 255 only are not stored (Zarr skips fill values)
        write(lambda: write_rows(store, ALPHA, open_array(store, ALPHA, mode="r+"), a, b, abuf),
              ALPHA)
    runs = np.asarray(stored, dtype=np.int64).reshape(-1, 2)
    codes, counts = count_colors(buf, runs[:, 0], runs[:, 1])
    write(lambda: write_task_colors(store, args["task"], codes, counts), TASK_COLORS)
    report = {"failed": failed, "pixels": int(b - a),
              "colors": {"distinct": len(codes), "pixels": int(counts.sum())},
              "crc32": checksum(buf), "colors_crc32": _colors_checksum(codes, counts)}
    if with_alpha and abuf is not None:  # only then: opaque collections' records are unchanged
        report["alpha"] = sorted(with_alpha)
        report["alpha_crc32"] = checksum(abuf)
    if args.get("plan") is not None:
        report["plan"] = args["plan"]
    # the completion record, after the data
    write(lambda: write_task_report(store, args["task"], report), f"{TASKS}/report")
    return report, codes, counts
