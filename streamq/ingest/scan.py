"""The header scan: every input's size, mode and possible transparency, read on the workers.

Cheap (a header, not the pixels), and enough to give each image its place in the flat
``pixels`` array (:mod:`streamq.ingest.plan`). The files are read where they live: a folder
or a URL (:class:`streamq.ingest.sources.SourceRoot`); a TIFF over ``max_pixels`` gets the
header of an image read in bands, a PNG over it the header of an image read in strips from
its first row (:mod:`streamq.ingest.bands`), a Zarr image its header from its metadata. An input that cannot be used
gets the reason instead, and is recorded as skipped.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from streamq.config import IngestConfig, RetryConfig
from streamq.decode import Header
from streamq.faults import retrying
from streamq.ingest import bands, zarr_images
from streamq.ingest.sources import SourceRoot
from streamq.names import stored_name
from streamq.scheduler import Runner
from streamq.stage import Task, run_tasks


def _scan_batch(args: tuple[Any, ...]) -> list[tuple[Any, ...] | str]:
    """Headers of files given by their stored names (see :mod:`streamq.names`), read where
    they live (a folder, or a URL: :mod:`streamq.ingest.sources`). ``args``: source, names,
    max_pixels, retry, sizes and optionally ``ingest.large``: with ``bands``, a TIFF or PNG
    over max_pixels gets its header for reading in bands (:mod:`streamq.ingest.bands`; a PNG's
    has a fifth element, True: its rows are read in order, by one task). A Zarr
    image's header is read from its metadata (:func:`streamq.ingest.bands.header_of`)."""
    source, rels, max_pixels, retry, sizes, *rest = args
    large = rest[0] if rest else "bands"
    files = [i for i, r in enumerate(rels) if not zarr_images.is_zarr_name(r)]
    found: list[Header | str] = [""] * len(rels)
    for i, h in zip(files, source.headers([rels[i] for i in files], [sizes[i] for i in files],
                                          max_pixels, retry), strict=True):
        found[i] = h
    for i, rel in enumerate(rels):
        h = found[i]
        if zarr_images.is_zarr_name(rel):
            found[i] = retrying(functools.partial(bands.header_of, source, rel, max_pixels,
                                                  large), "read", source.path(rel), retry)
        elif large == "bands" and isinstance(h, str) and bands.over_limit(h):
            found[i] = retrying(functools.partial(_band_header, source, rel, h),
                                "read", source.path(rel), retry)
    # a fifth element only for a PNG read in strips: the plans of other inputs as before
    return [((h.height, h.width, h.mode, h.alpha) + ((True,) if h.sequential else ()))
            if isinstance(h, Header) else h for h in found]


def _scan_batch_text(args: tuple[Any, ...]) -> str:
    """:func:`_scan_batch` as one JSON text: a list of 512 tuples took Dask ~16 ms a task to
    hand to the client (measured on a local cluster), a string ~1.5 ms."""
    return json.dumps(_scan_batch(args))


def _from_text(text: str) -> list[tuple[Any, ...] | str]:
    return [h if isinstance(h, str) else tuple(h) for h in json.loads(text)]


def _band_header(source: SourceRoot, rel: str, reason: str) -> Header | str:
    with bands.tiff_stream(source, rel) as src:
        return bands.band_header(src, reason)


def scan_headers(run: Runner, source: SourceRoot, rel: list[str], icfg: IngestConfig,
                 retry: RetryConfig, progress: bool | None, sizes: dict[str, int]) -> list[Any]:
    """The header of every name of ``rel`` (or the reason it cannot be used), in order, read
    by tasks of ``ingest.files_per_scan_task`` files each."""
    n = icfg.files_per_scan_task
    names = [stored_name(r) for r in rel]  # plain text to the workers, whatever the names
    batches = [(source, names[i:i + n], icfg.max_pixels, retry,
                [sizes.get(r) for r in rel[i:i + n]], icfg.large) for i in range(0, len(rel), n)]
    results: list[Any] = [None] * len(batches)

    def keep(task: Task, text: str) -> None:
        results[task.key] = _from_text(text)

    run_tasks(run, [Task(_scan_batch_text, b, len(b[1]), i) for i, b in enumerate(batches)],
              "scanning", "file", progress, on_result=keep)
    return [h for batch in results for h in batch]
