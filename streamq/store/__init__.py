"""The store layer: every name and path of a store, and the read-side questions about it.

Stages write their results and read each other's only through this package, so no stage
imports another (``pyproject.toml``, ``[tool.importlinter]``):

* :mod:`streamq.store.names` -- every array name and path of a store (the only module that
  spells them);
* :mod:`streamq.store.arrays` -- what tasks do on the workers: open an array, write the
  chunks they own and make them durable, then their completion record;
* :mod:`streamq.store.layout` -- :class:`Store`: creating and opening a store, its sections,
  tables and records;
* :mod:`streamq.store.checkpoint` -- a running fit's estimator state as JSON, bit-exact restore;
* :mod:`streamq.store.histogram` -- the collection's colour histogram (table ``colors``);
* :mod:`streamq.store.results` -- what each stage left (fit, per-image palettes, labels, image
  groups), read back, and the one rule of whether labels are current for a palette;
* :mod:`streamq.store.summaries` -- the summary of the per-image palettes and their labels;
* :mod:`streamq.store.selection` -- the images a command works on (``--ids``, ``--label``);
* :mod:`streamq.store.image_groups` -- the image groups (``cluster-images``), read back;
* :mod:`streamq.store.images` -- :class:`Collection`, a finished collection: an image's
  pixels, labels or quantized pixels, or Dask arrays;
* :mod:`streamq.store.overview` -- counts and the state of every result (``info``, the report).

This package re-exports the names, :mod:`~streamq.store.arrays`, :class:`Store` and
:class:`Collection`, so ``from streamq.store import Store`` reads as it always did.
"""

from streamq.store.arrays import (
    COLOR_CHUNK,
    N_CODES,
    TABLE_CHUNK,
    compressors,
    count_compressors,
    labels_dtype,
    open_array,
    remove_chunks,
    runs_by_weight,
    sync_written,
    write_record,
    write_rows,
    write_task_colors,
    write_task_report,
    zarr_root,
)
from streamq.store.images import Collection, Skipped, open_store
from streamq.store.layout import (
    FORMAT_VERSION,
    READ_VERSIONS,
    UPGRADABLE_VERSIONS,
    Store,
    StoreTarget,
    is_store,
    store_location,
)
from streamq.store.names import (
    ALPHA,
    COLORS,
    HAS_ALPHA,
    IMAGE_COLUMNS,
    IMAGES,
    PIXELS,
    PLAN,
    SCAN_SKIPPED,
    SKIP_COLUMNS,
    SKIPPED,
    TASK_COLORS,
    TASK_REPORTS,
    TASKS,
)

__all__ = [
    "ALPHA", "UPGRADABLE_VERSIONS", "COLORS", "COLOR_CHUNK", "FORMAT_VERSION", "HAS_ALPHA",
    "IMAGES", "IMAGE_COLUMNS", "N_CODES", "PIXELS", "PLAN", "READ_VERSIONS", "SCAN_SKIPPED",
    "SKIPPED", "SKIP_COLUMNS", "TABLE_CHUNK", "TASKS", "TASK_COLORS", "TASK_REPORTS",
    "Collection", "Skipped", "Store", "StoreTarget", "compressors", "count_compressors",
    "is_store", "labels_dtype", "open_array", "open_store", "remove_chunks", "runs_by_weight",
    "store_location", "sync_written", "write_record", "write_rows", "write_task_colors",
    "write_task_report", "zarr_root",
]
