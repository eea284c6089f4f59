"""The task that writes image files: one group of images, rebuilt from labels and palette.

Each task reads the labels of its images in runs of neighbours (one read per run, not per
image), encodes each image (:class:`~streamq.export.encode.Encoder`) and writes it under a
temporary name then renames it (on an object store: one PUT per file); it then makes its files
durable and writes its completion record (:func:`~streamq.export.records.write_file_record`).
An image over ``tiled_over`` pixels (the ingest's ``max_pixels``) is not encoded whole: its
labels are read a row of tiles at a time into a tiled BigTIFF (:mod:`streamq.export.tiff`),
written under a temporary name, fsynced and renamed (on an object store: written to a local
temporary file, then uploaded).
After each read of labels and before its record, it checks that the store's labels are still
those the export started with (readers take no lock: a quantize or refit may run beside it),
else removes what it wrote and stops the export in one line
(:class:`~streamq.errors.LabelsChangedError`). A write that fails for a reason outside the
image (a full disk...) is retried, then stops the export in one line (:mod:`streamq.faults`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from streamq.durable import sync_all
from streamq.errors import LabelsChangedError, StreamQError
from streamq.export.common import labels_changed_message
from streamq.export.encode import Encoder
from streamq.export.records import file_crc32, file_ok, record_key, write_file_record
from streamq.export.tiff import EXT, tile_shape, write_tiff
from streamq.faults import retrying
from streamq.fs import Location, storage_errors, write_atomic
from streamq.lock import check_writer
from streamq.store import ALPHA, PIXELS, open_array
from streamq.store.names import labels_path, per_image_alpha, per_image_palette
from streamq.store.results import read_identity

__all__ = ["export_images", "export_task"]


def export_task(args: dict[str, Any]) -> tuple[int, int]:
    """The Dask task: :func:`export_images` with the output's storage errors made one line."""
    out: Location = args["out"]
    with storage_errors(out):
        return export_images(args, None if out.is_local else out.filesystem())


def export_images(args: dict[str, Any], fs: Any) -> tuple[int, int]:
    """Write one task's images; return ``(written, found complete)``.

    A file is complete when a record of this export names it with its checksum and the
    labels it was made from (locally the file is read back to compare; on an object store the
    client compared sizes in its listing and sent only the others). After each read of labels
    the store's labels are checked to be those the export started with; after the last file,
    the files are made durable, the labels checked once more, and the task's record written.
    """
    k_img = args["per_image"]
    store = args["store"]
    labels_name = labels_path(k_img or None)
    expect = args.get("expect") or {}
    root = args.get("root")
    if fs is not None:  # an object store: the client sent only files without a matching record
        todo = list(args["images"])
    elif root is None:  # no records (a direct call): a file that exists is done
        todo = [item for item in args["images"] if not os.path.exists(item[1])]
    else:
        todo = [item for item in args["images"]
                if not file_ok(item[1], expect.get(record_key(root, item[1])))]
    existing = len(args["images"]) - len(todo)
    if not todo:
        return 0, existing
    # One read per run of neighbouring images, not one per image: a small image would
    # otherwise decode a whole inner chunk of the shard for a few of its pixels.
    retry = args.get("retry")
    name = PIXELS if args["dither"] else labels_name
    alpha = None if args.get("alpha") is None else np.asarray(args["alpha"], dtype=np.uint8)
    encoder = Encoder(args["format"], args["options"], args["dither"], alpha,
                      args.get("background", (255, 255, 255)))
    written: dict[str, list[int]] = {}  # relative name -> [crc32, size]
    paths: list[str] = []
    try:
        try:
            source = open_array(store, name)
            # dithering to a palette with alpha: the pixels' alpha too (a store with alpha)
            alpha_src = (open_array(store, ALPHA) if args["dither"] and (
                alpha is not None or args.get("per_image_alpha")) else None)
            palettes = open_array(store, per_image_palette(k_img)) if k_img else None
            alphas = (open_array(store, per_image_alpha(k_img))
                      if k_img and args.get("per_image_alpha") else None)
        except Exception:
            _check_labels(args)  # replaced meanwhile: say so rather than what failed
            raise
        tiled_over = args.get("tiled_over")
        tiled = [item for item in todo
                 if tiled_over is not None and item[3] * item[4] > tiled_over]
        for run in _contiguous_runs([item for item in todo if item not in tiled]):
            start, stop = run[0][2], run[-1][2] + run[-1][3] * run[-1][4]
            try:
                block = retrying(functools.partial(_read_rows, source, start, stop), "read",
                                 store.join(name).url, retry)
                run_palettes = (np.asarray(palettes[run[0][0]:run[-1][0] + 1])
                                if palettes is not None else None)
                run_alphas = (np.asarray(alphas[run[0][0]:run[-1][0] + 1])
                              if alphas is not None else None)
                px_alpha = (retrying(functools.partial(_read_rows, alpha_src, start, stop),
                                     "read", store.join(ALPHA).url, retry)
                            if alpha_src is not None else None)
            except Exception:
                _check_labels(args)
                raise
            _check_labels(args)  # what was read is what the export started with
            for image_id, path, off, h, w in run:
                j = image_id - run[0][0]
                palette, own = _own_palette(args, image_id, None if run_palettes is None
                                            else run_palettes[j], None if run_alphas is None
                                            else run_alphas[j], encoder.alpha)
                coder = encoder if own is encoder.alpha else replace(encoder, alpha=own)
                encoded = coder.encode(block[off - start:off - start + h * w], h, w, palette,
                                       None if px_alpha is None
                                       else px_alpha[off - start:off - start + h * w])
                check_writer()  # under `streamq run`: the store's lock must still be this job's
                paths.append(path)
                if fs is None:
                    retrying(functools.partial(write_atomic, path, encoded,  # made durable below
                                               sync=False, tmp_dir=args["tmp_dir"]),
                             "write", path, retry, write=True)
                else:
                    fs.pipe_file(path, encoded)  # one PUT: complete or absent
                if root is not None:
                    written[record_key(root, path)] = [zlib.crc32(encoded), len(encoded)]
        for item in tiled:  # each a band of tile rows at a time, never whole
            check_writer()
            paths.append(item[1])
            palette, own = _own_palette(args, item[0], None if palettes is None
                                        else palettes[item[0]], None if alphas is None
                                        else alphas[item[0]], alpha)
            checked = _write_tiled(args, item, source, palette, own, fs)
            if root is not None:
                written[record_key(root, item[1])] = list(checked)
        if root is not None:
            if fs is None:
                retrying(lambda: sync_all(paths, up_to=root), "write", root, retry, write=True)
            _check_labels(args)  # last: no record for files made from labels that changed
            write_file_record(args["out"], args["fit"], written, retry)
    except LabelsChangedError:
        _remove_written(args["out"], paths)  # not counted as done: a rerun writes them again
        raise
    return len(paths), existing


def _own_palette(args: dict[str, Any], image_id: int, palette: Any, alpha: Any,
                 shared_alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(palette, alpha)`` an image is written with: its own palette (per-image fits) or the
    shared one, only its own K entries for a quality fit (not the padding), and its own
    palette's alpha (None when all opaque) for per-image palettes with alpha."""
    pal = np.asarray(args["palette"] if palette is None else palette, dtype=np.uint8)
    if "n_colors" in args:  # a quality fit: the image's own K entries, not the padding
        pal = pal[:args["n_colors"][image_id]]
    if alpha is None:
        return pal, shared_alpha
    own = np.asarray(alpha, dtype=np.uint8)[:len(pal)]  # a quality fit's: its own K too
    return pal, (own if (own < 255).any() else None)


def _write_tiled(args: dict[str, Any], item: tuple[int, str, int, int, int], source: Any,
                 palette: np.ndarray, alpha: np.ndarray | None, fs: Any) -> tuple[int, int]:
    """Write an image over ``max_pixels`` as a tiled BigTIFF (:mod:`streamq.export.tiff`) from
    its labels, read a row of tiles at a time; return the file's ``(crc32, size)``.

    Locally the file is written under a temporary name in ``tmp_dir``, fsynced and renamed
    into place; on an object store it is written to a local temporary file (tifffile seeks
    back into what it wrote) and uploaded (one multipart upload: complete or absent). Either
    way the labels are checked once it is written and before it takes its name."""
    image_id, path, off, h, w = item
    retry = args.get("retry")
    tile = tile_shape(w)
    level = int(args.get("tiff_level", 1))
    url = args["store"].join(labels_path(args["per_image"] or None)).url

    def bands() -> Iterator[np.ndarray]:
        for top in range(0, h, tile[0]):
            rows = min(tile[0], h - top)
            start = off + top * w
            try:
                band = retrying(functools.partial(_read_rows, source, start, start + rows * w),
                                "read", url, retry)
            except Exception:
                _check_labels(args)
                raise
            yield band.reshape(rows, w)

    def write(tmp: str) -> tuple[int, int]:
        with open(tmp, "wb") as fh:
            write_tiff(fh, bands(), h, w, palette, alpha, tile, level)
            fh.flush()
            os.fsync(fh.fileno())
        _check_labels(args)  # what was read is what the export started with
        return file_crc32(tmp), os.path.getsize(tmp)

    if fs is None:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        stem = os.fsencode(os.path.basename(path))[:100].decode("utf-8", "ignore")  # NAME_MAX
        tmp = os.path.join(args["tmp_dir"] or folder, f".{stem}.{uuid.uuid4().hex}.tmp")
    else:
        handle, tmp = tempfile.mkstemp(prefix=".streamq-export-", suffix=EXT)
        os.close(handle)
    try:
        checked = retrying(functools.partial(write, tmp), "write", path, retry, write=True)
        check_writer()
        if fs is None:
            os.replace(tmp, path)  # made durable with the task's other files
        else:
            fs.put_file(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return checked


def _contiguous_runs(images: list[tuple[int, str, int, int, int]]
                     ) -> Iterator[list[tuple[int, str, int, int, int]]]:
    """Split ``(id, path, offset, h, w)`` rows into runs whose pixels lie back to back."""
    run: list[tuple[int, str, int, int, int]] = []
    for item in images:
        if run and item[2] != run[-1][2] + run[-1][3] * run[-1][4]:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _read_rows(arr: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of ``arr`` (read again when a transient fault is retried)."""
    return np.asarray(arr[start:stop])


def _check_labels(args: dict[str, Any]) -> None:
    """Stop the task unless the store's labels (and palette) are still those the export
    started with: a quantize, fit or ingest may run beside it (readers take no lock)."""
    expected = args.get("labels")
    if expected is None:
        return
    if read_identity(args["store"], args["per_image"], not args["dither"]) != expected:
        raise LabelsChangedError(labels_changed_message(args["store"].url))


def _remove_written(out: Location, paths: list[str]) -> None:
    with contextlib.suppress(OSError, StreamQError):
        out.remove_files(paths)
