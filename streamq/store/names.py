"""Every name and path inside a store: the one module that spells them.

A store is a Zarr v3 group (see ``docs/store-format.md``)::

    STORE/
      zarr.json                 attributes: "streamq" (format), "ingest" (state, settings,
                                summary), and one section per stage result
      pixels/                   (P, 3) uint8, every image's pixels back to back, row-major
      alpha/                    (P,) uint8 alpha of every pixel, laid out like pixels; only in
                                a store with an image that has a transparent pixel
      images/{path,label,mode,offset,height,width}   one row per stored image (id = row)
      images/has_alpha          (N,) bool: the image has a transparent pixel (only with alpha/)
      skipped/{path,reason}     inputs that were not stored, and why
      ingest/plan/...           the ingest plan (every image with a readable header)
      ingest/scan_skipped/...   inputs whose header could not be read, kept until the end
      ingest/tasks/{chunk_start,chunk_stop,report}   one row per write task; "report" is
                                the completion record, written after the task's pixels
      ingest/colors             (T, 2, 2**24) int64: row t holds the d_t distinct colours of
                                the pixels task t stored ([t, 0, :d_t]) and their counts
                                ([t, 1, :d_t]), written by the task before its record
      colors/{code,count}       the collection's colour histogram (the rows summed)
      colors_rgba/{code,count}  the premultiplied RGBA histogram (a collection with alpha)
      fit/palette, fit/history, fit/checkpoint, fit/starts   the shared palette and its fit
      quantize/{labels,records,images}   labels of the shared palette, their completion
                                records and the per-image errors
      per_image/{tasks,records}, per_image/k{K}/{centers,palette,labels,label_records,images}
                                the per-image palettes of K colours and their labels;
                                per_image/k{K}/alpha with images with alpha
      per_image/quality/{k,mse,psnr,met,reason}   a quality fit's K of each image
      groups/...                the image groups (descriptors, centres, checkpoint, ...)

Stages and the other store modules import these names; none spells a path itself
(``tests/test_architecture.py`` checks it).
"""

from __future__ import annotations

# -- the collection (ingest) ---------------------------------------------------------------
PIXELS = "pixels"
ALPHA = "alpha"
IMAGES = "images"
HAS_ALPHA = f"{IMAGES}/has_alpha"
IMAGE_COLUMNS = ("path", "label", "mode", "offset", "height", "width")
SKIPPED = "skipped"
SKIP_COLUMNS = ("path", "reason")
PLAN = "ingest/plan"
SCAN_SKIPPED = "ingest/scan_skipped"
TASKS = "ingest/tasks"
TASK_REPORTS = f"{TASKS}/report"
TASK_COLORS = "ingest/colors"
COLORS = "colors"
COLOR_CODES = f"{COLORS}/code"
COLOR_COUNTS = f"{COLORS}/count"
COLORS_RGBA = "colors_rgba"

#: How centres are spelled in every name on disk (store format 3; scikit-learn's spelling):
#: the columns ``fit/palette/centers_{j}`` and the arrays ``per_image/k{K}/centers``,
#: ``groups/centers``. The older names are in :data:`streamq.store.upgrade.RENAMES`.
CENTERS = "centers"

# -- the shared palette (fit) ----------------------------------------------------------------
FIT = "fit"
FIT_PALETTE = f"{FIT}/palette"
FIT_HISTORY = f"{FIT}/history"
CHECKPOINT = f"{FIT}/checkpoint"
STARTS = f"{FIT}/starts"  # one slot per exact Lloyd start: its checkpoint, then its result
HISTORY_KEYS = ("step", "pixels_seen", "shift", "inertia")

# -- labels of the shared palette (quantize) ---------------------------------------------------
QUANTIZE = "quantize"

# -- per-image palettes --------------------------------------------------------------------------
PER_IMAGE = "per_image"
PER_IMAGE_TASKS = f"{PER_IMAGE}/tasks"
PER_IMAGE_RECORDS = f"{PER_IMAGE}/records"
#: a quality fit's choice per image (``fit --per-image --quality``): columns k, mse, psnr, met, reason
PER_IMAGE_QUALITY = f"{PER_IMAGE}/quality"
QUALITY_COLUMNS = ("k", "mse", "psnr", "met", "reason")

# -- image groups ----------------------------------------------------------------------------------
GROUPS = "groups"
GROUP_CENTERS = f"{GROUPS}/{CENTERS}"
GROUP_OF_IMAGE = f"{GROUPS}/images/group"
GROUP_DISTANCE = f"{GROUPS}/images/distance"
GROUP_OVERLAP = f"{GROUPS}/overlap"
GROUP_LABELS = f"{GROUPS}/labels"
GROUP_CHECKPOINT = f"{GROUPS}/checkpoint"
GROUP_HISTORY = f"{GROUPS}/history"
GROUP_ASSIGN_RECORDS = f"{GROUPS}/assign_records"
GROUP_DESCRIPTORS = f"{GROUPS}/descriptors"
GROUP_DESCRIBE_RECORDS = f"{GROUPS}/describe_records"
GROUP_TASKS = f"{GROUPS}/tasks"


def fit_center_columns(dims: int) -> tuple[str, ...]:
    """The columns of ``fit/palette`` holding the centres' ``dims`` coordinates."""
    return tuple(f"{CENTERS}_{j}" for j in range(dims))


def per_image_path(k: int) -> str:
    """The group of the per-image palettes of ``k`` colours and their labels."""
    return f"{PER_IMAGE}/k{k}"


def per_image_centers(k: int) -> str:
    """The ``(N, k, D)`` float centres of the per-image palettes of ``k`` colours (D = 3; 4,
    premultiplied RGBA, in a store with images with alpha)."""
    return f"{per_image_path(k)}/{CENTERS}"


def per_image_palette(k: int) -> str:
    """The ``(N, k, 3)`` uint8 per-image palettes of ``k`` colours."""
    return f"{per_image_path(k)}/palette"


def per_image_alpha(k: int) -> str:
    """The ``(N, k)`` uint8 alpha of the per-image palettes of ``k`` colours: only in a store
    with images with alpha (beside ``(N, k, 4)`` premultiplied RGBA centres)."""
    return f"{per_image_path(k)}/alpha"


def per_image_labels(k: int) -> str:
    """The section (an attribute, not an array) of the labels of the per-image palettes of
    ``k`` colours."""
    return f"per_image_quantize_k{k}"


def _result_path(k: int | None) -> str:
    return QUANTIZE if k is None else per_image_path(k)


def labels_path(k: int | None = None) -> str:
    """The ``(P,)`` labels of the shared palette (``k`` None) or of the per-image palettes of
    ``k`` colours, laid out like ``pixels``."""
    return f"{_result_path(k)}/labels"


def label_records_path(k: int | None = None) -> str:
    """The completion records of the chunks of :func:`labels_path` ``(k)``."""
    return f"{QUANTIZE}/records" if k is None else f"{per_image_path(k)}/label_records"


def image_errors_path(k: int | None = None) -> str:
    """The table of per-image errors (``sse``, ``mse``, ``psnr``, ``ssim``) of the labels
    :func:`labels_path` ``(k)``."""
    return f"{_result_path(k)}/images"
