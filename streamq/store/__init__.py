"""The store layer: every name and path of a store, and the read-side questions about it.

Stages write their results and read each other's only through this package, so no stage
imports another (``pyproject.toml``, ``[tool.importlinter]``):

* :mod:`streamq.store.layout` -- the Zarr layout of a collection: array names, :class:`Store`
  (tables, records, sections), :class:`Collection`, chunk-owning writes;
* :mod:`streamq.store.checkpoint` -- a running fit's estimator state as JSON, bit-exact restore;
* :mod:`streamq.store.histogram` -- the collection's colour histogram (table ``colors``);
* :mod:`streamq.store.results` -- what each stage left (fit, per-image palettes, labels, image
  groups), read back, and the one rule of whether labels are current for a palette;
* :mod:`streamq.store.summaries` -- the summary of the per-image palettes and their labels;
* :mod:`streamq.store.selection` -- the images a command works on (``--ids``, ``--label``);
* :mod:`streamq.store.images` -- an image's pixels, labels or quantized pixels, or Dask arrays;
* :mod:`streamq.store.overview` -- counts and the state of every result (``info``, the report).

This package re-exports :mod:`~streamq.store.layout`, so ``from streamq.store import Store``
reads as it always did.
"""

from streamq.store.layout import (
    ALPHA,
    COLOR_CHUNK,
    COLORS,
    FORMAT_VERSION,
    HAS_ALPHA,
    IMAGE_COLUMNS,
    IMAGES,
    N_CODES,
    PIXELS,
    PLAN,
    READ_VERSIONS,
    SKIP_COLUMNS,
    SKIPPED,
    TABLE_CHUNK,
    TASK_COLORS,
    TASKS,
    UPGRADABLE_VERSIONS,
    Collection,
    Skipped,
    Store,
    StoreTarget,
    compressors,
    count_compressors,
    is_store,
    labels_dtype,
    open_array,
    open_store,
    remove_chunks,
    runs_by_weight,
    store_location,
    sync_written,
    write_record,
    write_rows,
    write_task_colors,
    write_task_report,
    zarr_root,
)

__all__ = [
    "ALPHA", "UPGRADABLE_VERSIONS", "COLORS", "COLOR_CHUNK", "FORMAT_VERSION", "HAS_ALPHA",
    "IMAGES", "IMAGE_COLUMNS", "N_CODES", "PIXELS", "PLAN", "READ_VERSIONS", "SKIPPED",
    "SKIP_COLUMNS", "TABLE_CHUNK", "TASKS", "TASK_COLORS", "Collection", "Skipped", "Store",
    "StoreTarget", "compressors", "count_compressors", "is_store", "labels_dtype", "open_array",
    "open_store", "remove_chunks", "runs_by_weight", "store_location", "sync_written",
    "write_record", "write_rows", "write_task_colors", "write_task_report", "zarr_root",
]
