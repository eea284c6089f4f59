"""Ingest: images into a store (the first stage).

Two ways in, side by side, over the same steps:

* :mod:`streamq.ingest.files` -- image files (a folder, a glob, a list, a URL prefix)
  (:func:`ingest`);
* :mod:`streamq.ingest.arrays` -- in-memory, Dask or Zarr arrays (:func:`ingest_array`).

The steps, in the order an image meets them:

* :mod:`streamq.ingest.local` -- local files listed (:func:`list_sources`), their fingerprint;
* :mod:`streamq.ingest.urls` -- sources at URLs listed on the client, their fingerprint;
* :mod:`streamq.ingest.scan` -- every file's header, read on the workers;
* :mod:`streamq.ingest.plan` -- the plan: images packed, chunks grouped into write tasks,
  whether a store's plan is kept on a rerun;
* :mod:`streamq.ingest.task` -- the write task: pixels, colour counts, completion record;
* :mod:`streamq.ingest.finish` -- colour counts merged, records consolidated, the summary;
* :mod:`streamq.ingest.bands` -- images read in bands of rows (TIFFs and PNGs over
  ``max_pixels``, Zarr images);
* :mod:`streamq.ingest.zarr_images` -- Zarr and OME-Zarr images: layout, rows, fingerprint;
* :mod:`streamq.ingest.png_rows` -- a PNG's rows read in order from the first (strips);
* :mod:`streamq.ingest.sources` -- where the images are, and reading them on a worker.

One way only: ``files | arrays -> local | urls | scan | plan | task | finish -> bands ->
sources | zarr_images | png_rows`` (``pyproject.toml``, ``ingest-package``).
"""

from streamq.ingest.arrays import ingest_array
from streamq.ingest.files import ingest
from streamq.ingest.finish import IngestSummary
from streamq.ingest.local import list_sources

__all__ = ["IngestSummary", "ingest", "ingest_array", "list_sources"]
