"""The write task of an ingest (runs on a worker): pixels, colour counts, then the record.

A task owns whole chunks of ``pixels`` (and of ``alpha``). It decodes every image that
overlaps them (:func:`_write_task`; a Zarr image, or an image over ``max_pixels``, is read
in bands, :mod:`streamq.ingest.bands`), writes their pixels, the counts of the colours of those
pixels, and then its completion record, with checksums of both (:func:`store_task_pixels`,
also the end of an array ingest's task). A task recorded by an earlier run is checked
against its record's checksums (:func:`_verify_task`, reading :data:`VERIFY_PIXELS` at a
time) and runs again only when they differ.

The task holding a PNG over ``max_pixels`` owns every chunk of it (the PNG is read in strips,
from its first row, :mod:`streamq.ingest.png_rows`) -- possibly a gigapixel: it never holds
its pixels at once but writes each shard as soon as it is whole (:class:`_ShardSink`), with
the record a task holding them all would write. Killed part-way, it has no record and runs
again whole, writing the same shards.

Transient faults of reads and writes are retried (:func:`streamq.faults.retrying`); one that
lasts fails the task, and so the stage, before its record is written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from streamq.durable import checksum
from streamq.errors import StreamQError
from streamq.faults import is_transient, retrying
from streamq.ingest import bands
from streamq.kmeans.histogram import ColorTotals, count_colors
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

__all__ = ["VERIFY_PIXELS", "put_pixels", "store_task_pixels"]

#: Rows of ``pixels`` read at a time to check a recorded task against its checksums
VERIFY_PIXELS = 1 << 22


def _colors_checksum(codes: np.ndarray, counts: np.ndarray) -> int:
    """The checksum of the ``(2, n)`` int64 row ``[codes, counts]``, without building it."""
    return checksum(np.asarray(counts, np.int64), checksum(np.asarray(codes, np.int64)))


def _verify_task(args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The colour counts of a task recorded by an earlier run when its pixels and counts are
    still what its record says (checksums, plan), else None: the task runs again."""
    record, a, b = args["expect"], args["px_start"], args["px_stop"]
    if record.get("plan") != args.get("plan"):
        return None
    store, retry = args["store"], args.get("retry")
    try:
        if "crc32" in record and _crc(store, PIXELS, a, b, retry) != record["crc32"]:
            return None
        n = int(record.get("colors", {}).get("distinct", 0))
        part = np.zeros((2, 0), np.int64)
        if n:
            part = retrying(lambda: np.asarray(open_array(store, TASK_COLORS)[args["task"], :, :n]),
                            "read", store.join(TASK_COLORS).url, retry)
        if "colors_crc32" in record and _colors_checksum(part[0], part[1]) != record["colors_crc32"]:
            return None
        if args.get("alpha"):  # the alpha rows: as recorded, or all 255 (no transparent pixel)
            if _crc(store, ALPHA, a, b, retry) != (record["alpha_crc32"] if "alpha_crc32" in record
                                                    else _opaque_crc(b - a)):
                return None
    except StreamQError:
        raise
    except Exception:  # noqa: BLE001  (a chunk that no longer decodes: torn, rewrite it)
        return None
    return part[0], part[1]


def _read(store: Any, name: str, p: int, q: int) -> np.ndarray:
    return np.asarray(open_array(store, name)[p:q])


def _crc(store: Any, name: str, a: int, b: int, retry: Any) -> int:
    """:func:`streamq.durable.checksum` of rows ``[a, b)`` of array ``name``, read
    :data:`VERIFY_PIXELS` rows at a time (a task of a PNG read in strips may hold a gigapixel)."""
    crc = 0
    for p in range(a, b, VERIFY_PIXELS):
        q = min(b, p + VERIFY_PIXELS)
        crc = checksum(retrying(functools.partial(_read, store, name, p, q), "read",
                                store.join(name).url, retry), crc)
    return crc


def _opaque_crc(n: int) -> int:
    """The checksum of ``n`` alpha values of 255 (an opaque task's alpha rows), made
    :data:`VERIFY_PIXELS` at a time."""
    crc = 0
    for p in range(0, n, VERIFY_PIXELS):
        crc = checksum(np.full(min(n - p, VERIFY_PIXELS), 255, np.uint8), crc)
    return crc


def _write_task(args: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, str]:
    """Decode, write and count one task's pixels; return its record, colour counts and what
    it did (``ran``; for a task recorded by an earlier run, ``verified`` when its data
    matched its record's checksums, else ``redone``).

    A task holding a PNG read in strips (``stream``: it owns every chunk of the image) writes
    its shards one by one as their pixels come (:class:`_ShardSink`), never holding them all.
    Transient faults of reads and writes are retried (:func:`streamq.faults.retrying`); one
    that lasts fails the task, and so the stage, before its record is written."""
    a, b = args["px_start"], args["px_stop"]
    status = "ran"
    if args.get("expect") is not None:
        found = _verify_task(args)
        if found is not None:
            return args["expect"], found[0], found[1], "verified"
        status = "redone"
    keep_alpha = bool(args.get("alpha"))  # the plan made the alpha array
    if args.get("stream"):
        sink = _ShardSink(args, keep_alpha)
        failed, with_alpha = _fill(args, sink.put, sink.drop)[1:]
        return (*sink.finish(failed, with_alpha), status)
    buf = np.zeros((b - a, 3), dtype=np.uint8)
    abuf = np.full(b - a, 255, dtype=np.uint8) if keep_alpha else None
    stored, failed, with_alpha = _fill(args, functools.partial(put_pixels, buf, abuf, a))
    return (*store_task_pixels(args, buf, stored, failed, abuf, with_alpha), status)


#: ``put(lo, hi, start, rgb, alpha)``: pixels ``[lo, hi)`` of an image whose ``rgb`` (and
#: ``alpha``) begin at pixel ``start`` into a task's pixels; whether an alpha put is below 255
Put = Callable[[int, int, int, np.ndarray, "np.ndarray | None"], bool]


def _fill(args: dict[str, Any], put: Put, drop: Callable[[int, int], None] | None = None
          ) -> tuple[list[tuple[int, int]], list[list[Any]], list[int]]:
    """Decode every image of a task and ``put`` the pixels of its rows, in order; return the
    runs of the task's rows holding decoded pixels, the failed images and the images with a
    transparent pixel in these rows. ``drop(lo, hi)``: pixels put of an image read in bands
    that then failed are not to be counted."""
    a, b = args["px_start"], args["px_stop"]
    retry = args.get("retry")
    keep_alpha = bool(args.get("alpha"))
    with_alpha: list[int] = []  # images with a transparent pixel in this task's rows
    failed: list[list[Any]] = []
    stored: list[tuple[int, int]] = []  # rows of the task holding decoded pixels
    source, background = args["source"], tuple(args["background"])
    max_pixels = args["max_pixels"]
    # a Zarr image, or one over max_pixels (then in the plan only so), is read in bands
    decoded = source.pixels([item[1] for item in args["images"]
                             if not bands.is_banded(item[1], item[3], item[4], max_pixels)],
                            max_pixels, background, retry, alpha=keep_alpha)
    for image_id, rel, off, h, w in args["images"]:
        if bands.is_banded(rel, h, w, max_pixels):
            lo, hi = max(off, a), min(off + h * w, b)
            banded = retrying(functools.partial(_fill_bands, args, put, rel, off, w, lo, hi),
                              "read", source.path(rel), retry)
            if isinstance(banded, str):  # any task meeting the failure records it
                failed.append([int(image_id), banded])
                if drop is not None:
                    drop(lo, hi)
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
        if put(lo, hi, off, rgb, alpha):
            with_alpha.append(int(image_id))
    return stored, failed, with_alpha


def _fill_bands(args: dict[str, Any], put: Put, rel: str, off: int, w: int, lo: int,
                hi: int) -> bool | str:
    """Pixels ``[lo, hi)`` of an image read in bands (:mod:`streamq.ingest.bands`) given to
    ``put``; return whether a stored alpha is below 255 there, or the reason it failed."""
    transparent = False
    keep_alpha = bool(args.get("alpha"))
    try:
        with bands.opened(args["source"], rel) as rows:
            for top, rgb, alpha in bands.read_rows(rows, (lo - off) // w, -(-(hi - off) // w),
                                                   keep_alpha, tuple(args["background"])):
                start = off + top * w  # the pixel index of the band's first pixel
                p, q = max(lo, start), min(hi, start + rgb.shape[0] * w)
                transparent = put(p, q, start, rgb, alpha) or transparent
    except StreamQError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        return f"cannot read image in bands: {type(exc).__name__}: {exc}"
    return transparent


class _ShardSink:
    """The pixels of a task that owns the chunks of a PNG read in strips, written a shard at
    a time: the images come in the order of their pixels, so a shard is whole once a later
    one is reached (:meth:`put`), and is then written, counted and checksummed (CRC-32 carried
    from shard to shard: the task's record is that of a task holding all its pixels at once).
    Pixels of shards already written that come again (a read retried from its first row)
    are the same pixels: left alone."""

    def __init__(self, args: dict[str, Any], keep_alpha: bool) -> None:
        self.args = args
        self.a, self.b = args["px_start"], args["px_stop"]
        self.shard = int(args["shard"])
        n = min(self.shard, self.b - self.a)
        self.lo = self.a  # the first pixel of the shard being filled
        self.buf = np.zeros((n, 3), np.uint8)
        self.abuf = np.full(n, 255, np.uint8) if keep_alpha else None
        self.runs: list[list[int]] = []  # pixels of the shard holding decoded pixels
        self.crc = self.alpha_crc = 0
        self.totals = ColorTotals()

    def put(self, lo: int, hi: int, start: int, rgb: np.ndarray, alpha: np.ndarray | None
            ) -> bool:
        transparent = False
        lo = max(lo, self.lo)
        while lo < hi:
            end = min(self.lo + len(self.buf), self.b)
            if lo >= end:
                self._flush()
                continue
            q = min(hi, end)
            transparent = put_pixels(self.buf, self.abuf, self.lo, lo, q, start, rgb,
                                     alpha) or transparent
            if self.runs and lo <= self.runs[-1][1]:  # a read retried: counted once
                self.runs[-1][1] = max(self.runs[-1][1], q)
            else:
                self.runs.append([lo, q])
            lo = q
        return transparent

    def drop(self, lo: int, hi: int) -> None:
        """Pixels ``[lo, hi)`` (an image that failed part-way) are not counted: taken out of
        the shard being filled, and the counts of those of shards written taken back."""
        self.runs = [[p, min(q, lo)] for p, q in self.runs if p < lo] \
            + [[max(p, hi), q] for p, q in self.runs if q > hi]
        store, retry = self.args["store"], self.args.get("retry")
        for p in range(lo, min(hi, self.lo), self.shard):
            q = min(p + self.shard, hi, self.lo)
            px = retrying(functools.partial(_read, store, PIXELS, p, q), "read",
                          store.join(PIXELS).url, retry)
            codes, counts = count_colors(px)
            self.totals.add(codes, -counts)

    def _flush(self) -> None:
        """Write, count and checksum the shard being filled; the next one is then filled."""
        end = min(self.lo + len(self.buf), self.b)
        n = end - self.lo
        buf, abuf = self.buf[:n], None if self.abuf is None else self.abuf[:n]
        store, retry = self.args["store"], self.args.get("retry")
        lo = self.lo

        def write(name: str, data: np.ndarray) -> None:
            retrying(lambda: write_rows(store, name, open_array(store, name, mode="r+"), lo,
                                        end, data), "write", store.join(name).url, retry,
                     write=True)

        write(PIXELS, buf)
        if abuf is not None:
            write(ALPHA, abuf)
            self.alpha_crc = checksum(abuf, self.alpha_crc)
        self.crc = checksum(buf, self.crc)
        runs = np.asarray(self.runs, np.int64).reshape(-1, 2) - lo
        self.totals.add(*count_colors(buf, runs[:, 0], runs[:, 1]))
        self.lo, self.runs = end, []
        self.buf[:] = 0
        if self.abuf is not None:
            self.abuf[:] = 255

    def finish(self, failed: list[list[Any]], with_alpha: list[int]
               ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Write the shards left, then the colour counts and the completion record."""
        while self.lo < self.b:
            self._flush()
        codes, counts = self.totals.result()
        return _record(self.args, codes, counts, self.crc, failed, with_alpha, self.alpha_crc)


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
    return _record(args, codes, counts, checksum(buf), failed, with_alpha,
                   None if abuf is None else checksum(abuf))


def _record(args: dict[str, Any], codes: np.ndarray, counts: np.ndarray, crc: int,
            failed: list[list[Any]], with_alpha: list[int] | None, alpha_crc: int | None
            ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Write a task's colour counts, then its completion record (after all its data): the
    ``failed`` images, the checksums ``crc`` of its pixels and ``alpha_crc`` of its alpha
    (kept when some image of ``with_alpha`` has a transparent pixel in its rows)."""
    a, b = args["px_start"], args["px_stop"]
    retry, store = args.get("retry"), args["store"]

    def write(fn: Any, name: str) -> None:
        retrying(fn, "write", store.join(name).url, retry, write=True)

    write(lambda: write_task_colors(store, args["task"], codes, counts), TASK_COLORS)
    report = {"failed": failed, "pixels": int(b - a),
              "colors": {"distinct": len(codes), "pixels": int(counts.sum())},
              "crc32": crc, "colors_crc32": _colors_checksum(codes, counts)}
    if with_alpha and alpha_crc is not None:  # only then: opaque collections' records are unchanged
        report["alpha"] = sorted(with_alpha)
        report["alpha_crc32"] = alpha_crc
    if args.get("plan") is not None:
        report["plan"] = args["plan"]
    # the completion record, after the data
    write(lambda: write_task_report(store, args["task"], report), f"{TASKS}/report")
    return report, codes, counts
