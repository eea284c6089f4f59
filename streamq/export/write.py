"""The task that writes image files: one group of images, rebuilt from labels and palette.

Each task reads the labels of its images in runs of neighbours (one read per run, not per
image), encodes each image (:class:`~streamq.export.encode.Encoder`) and writes it under a
temporary name then renames it (on an object store: one PUT per file); it then makes its files
durable and writes its completion record (:func:`~streamq.export.records.write_file_record`).
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
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from streamq.durable import sync_all
from streamq.errors import LabelsChangedError, StreamQError
from streamq.export.common import labels_changed_message
from streamq.export.encode import Encoder
from streamq.export.records import file_ok, record_key, write_file_record
from streamq.faults import retrying
from streamq.fs import Location, storage_errors, write_atomic
from streamq.lock import check_writer
from streamq.store import PIXELS, open_array
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
            palettes = open_array(store, per_image_palette(k_img)) if k_img else None
            alphas = (open_array(store, per_image_alpha(k_img))
                      if k_img and args.get("per_image_alpha") else None)
        except Exception:
            _check_labels(args)  # replaced meanwhile: say so rather than what failed
            raise
        for run in _contiguous_runs(todo):
            start, stop = run[0][2], run[-1][2] + run[-1][3] * run[-1][4]
            try:
                block = retrying(functools.partial(_read_rows, source, start, stop), "read",
                                 store.join(name).url, retry)
                run_palettes = (np.asarray(palettes[run[0][0]:run[-1][0] + 1])
                                if palettes is not None else None)
                run_alphas = (np.asarray(alphas[run[0][0]:run[-1][0] + 1])
                              if alphas is not None else None)
            except Exception:
                _check_labels(args)
                raise
            _check_labels(args)  # what was read is what the export started with
            for image_id, path, off, h, w in run:
                palette = np.asarray(run_palettes[image_id - run[0][0]] if run_palettes is not None
                                     else args["palette"], dtype=np.uint8)
                if "n_colors" in args:  # a quality fit: the image's own K entries, not the padding
                    palette = palette[:args["n_colors"][image_id]]
                coder = encoder
                if run_alphas is not None:  # its own palette's alpha (none if all opaque)
                    own = np.asarray(run_alphas[image_id - run[0][0]], dtype=np.uint8)
                    coder = replace(encoder, alpha=own if (own < 255).any() else None)
                encoded = coder.encode(block[off - start:off - start + h * w], h, w, palette)
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
        if root is not None:
            if fs is None:
                retrying(lambda: sync_all(paths, up_to=root), "write", root, retry, write=True)
            _check_labels(args)  # last: no record for files made from labels that changed
            write_file_record(args["out"], args["fit"], written, retry)
    except LabelsChangedError:
        _remove_written(args["out"], paths)  # not counted as done: a rerun writes them again
        raise
    return len(paths), existing


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
