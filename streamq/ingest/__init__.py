"""Ingest: images into a store (the first stage).

* :mod:`streamq.ingest.files` -- image files (a folder, a glob, a list, a URL prefix): list,
  scan headers, plan write tasks, write pixels, colour counts and records; the plan, task and
  record machinery that :mod:`~streamq.ingest.arrays` shares;
* :mod:`streamq.ingest.arrays` -- in-memory, Dask or Zarr arrays (:func:`ingest_array`);
* :mod:`streamq.ingest.bands` -- images over ``max_pixels`` read in bands of rows;
* :mod:`streamq.ingest.sources` -- sources at URLs: listing, fingerprint, reading on a worker.

One way only: ``arrays -> files -> bands -> sources`` (``pyproject.toml``, ``ingest-family``).
"""

from streamq.ingest.arrays import ingest_array
from streamq.ingest.files import IngestSummary, ingest, list_sources

__all__ = ["IngestSummary", "ingest", "ingest_array", "list_sources"]
