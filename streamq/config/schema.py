"""The configuration's schema: every key, its type, default, check and help text.

A configuration is a :class:`StreamQConfig` made of one frozen dataclass per stage. A key is
a field; its metadata holds the check of its value (a function returning what was expected,
or None) and its help text, which ``streamq --help``, ``configs/default.yaml`` and the docs
show (:func:`streamq.config.describe`). Reading and checking a configuration is
:mod:`streamq.config.loading`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ClusterImagesConfig",
    "DaskConfig",
    "ExportConfig",
    "FitConfig",
    "IngestConfig",
    "LockConfig",
    "PerImageConfig",
    "QuantizeConfig",
    "ReportConfig",
    "RetryConfig",
    "StreamQConfig",
]

Check = Callable[[Any], str | None]


def _opt(default: Any, check: Check | None = None, doc: str = "") -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a number > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "a number >= 0"


def _at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"an integer >= {low}"


def _rgb(v: Any) -> str | None:
    return None if len(v) == 3 and all(0 <= c <= 255 for c in v) else "three integers in 0..255"


@dataclass(frozen=True)
class DaskConfig:
    """Where the work runs.

    ``scheduler`` is ``None`` (start a ``LocalCluster`` sized to the machine and close
    it at the end), ``"threads"`` or ``"sync"`` (in-process, for small jobs and
    debugging), or the address of a running scheduler such as ``tcp://10.0.0.1:8786``.
    ``processes`` says whether that local cluster's workers are processes or threads of
    the command's own process; by default the fit's are threads (its tasks are compiled
    k-means kernels that release the GIL, and such a cluster starts in ~0.03 s instead of
    ~1 s) and every other stage's are processes (decoding, compressing and writing images
    is Python-level work per file, which processes spread over many cores).
    """

    scheduler: str | None = _opt(None, doc="None, 'threads', 'sync' or a scheduler address")
    n_workers: int | None = _opt(None, _at_least(1), "local cluster workers (default: cores)")
    threads_per_worker: int | None = _opt(None, _at_least(1), "threads per local worker")
    memory_limit: str | None = _opt(None, doc="memory limit per local worker process, e.g. "
                                    "'2GiB' (set, streamq run's fit stays on the worker "
                                    "processes too)")
    processes: bool | None = _opt(None, doc="local cluster workers as processes (true) or as "
                                  "threads of this process (false, for every stage: as "
                                  "--scheduler threads, on Dask); default: threads for the "
                                  "shared palette's fit, processes for the other stages")


@dataclass(frozen=True)
class IngestConfig:
    """How images become a store (see ``docs/store-format.md``)."""

    source: str | None = _opt(None, doc="folder, glob pattern or text file listing paths; or a "
                               "URL read by the workers (s3://BUCKET/PREFIX/, a list of URLs)")
    chunk_pixels: int = _opt(4_194_304, lambda v: None if 1024 <= v <= 2**28 else "an integer in 1024..2**28",
                             "pixels per shard of the pixel array (one write task each)")
    block_pixels: int = _opt(262_144, _at_least(1024),
                             "pixels per inner chunk (the unit the sampler reads)")
    codec: Literal["zstd", "lz4", "none"] = _opt("lz4", doc="compression of pixel chunks")
    level: int | None = _opt(None, _at_least(0), "codec level (default: the codec's fast level)")
    max_pixels: int = _opt(178_956_970, _at_least(1), "images with more pixels are skipped")
    background: tuple[int, int, int] = _opt(
        (255, 255, 255), _rgb, "RGB colour that transparent pixels are composited on "
        "(alpha: flatten)"
    )
    alpha: Literal["keep", "flatten"] = _opt(
        "keep", doc="keep: an image with any transparent pixel keeps its alpha (premultiplied "
        "colours + alpha plane); flatten: composite every image on background")
    large: Literal["bands", "skip"] = _opt(
        "bands", doc="images over max_pixels: bands: a TIFF/BigTIFF is read in bands of rows by "
        "the write tasks, never whole, as a Zarr image (a *.zarr folder) of any size always is "
        "(others are skipped); skip: every one is skipped")
    strict: bool = _opt(False, doc="exit non-zero when any input was skipped")
    files_per_scan_task: int = _opt(512, _at_least(1), "files per header-scan task")


def _k(v: Any) -> str | None:
    return None if 2 <= v <= 65_536 else "an integer from 2 to 65536"


def _quality(v: Any) -> str | None:
    lo, hi = v
    return None if 0 <= lo <= hi <= 100 else \
        "[MIN, MAX]: PSNR targets in dB with 0 <= MIN <= MAX <= 100, e.g. [30, 40]"


def _k_range(v: Any) -> str | None:
    lo, hi = v
    return None if 2 <= lo <= hi <= 65_536 else \
        "[LO, HI]: the K searched, integers with 2 <= LO <= HI <= 65536, e.g. [2, 256]"


def _fraction(v: Any) -> str | None:
    return None if 0 < v <= 1 else "a number in (0, 1]"


@dataclass(frozen=True)
class FitConfig:
    """How the shared palette is learned (see ``streamq.fit``)."""

    colors: int = _opt(16, _k, "palette size K (2..65536)")
    algorithm: Literal["minibatch", "lloyd"] = _opt(
        "minibatch", doc="minibatch: streamed MiniBatchKMeans; lloyd: exact K-Means on all pixels")
    init: Literal["k-means++", "random"] = _opt("k-means++", doc="initial centres method")
    init_size: int = _opt(200_000, _at_least(2),
                          "minibatch: pixels of the initial sample (drawn collection-wide)")
    n_init: int = _opt(16, _at_least(1), "k-means++ starts raced on the colour grid, each a "
                       "task (minibatch adds its own result as one more start); the best 2 go "
                       "on, and are finished on every colour (only the better one when a "
                       "finer grid ranks them)")
    batch_size: int = _opt(65_536, _at_least(16), "pixels per partial_fit step")
    batches_per_task: int = _opt(8, _at_least(1), "batches drawn by one sampling task")
    blocks_per_task: int = _opt(64, _at_least(1), "inner chunks one sampling task reads")
    prefetch: int = _opt(4, _at_least(1), "sampling tasks in flight (ordered window)")
    tol: float = _opt(0.0, _non_negative,
                      "stop when the squared centre shifts of a step sum to at most tol times "
                      "the pixels' mean variance (scikit-learn's rule); 0: exact Lloyd runs to "
                      "zero label changes, mini-batch to max_steps")
    patience: int = _opt(10, _at_least(1), "minibatch: ... for this many consecutive steps")
    max_steps: int = _opt(24, _at_least(1), "minibatch: stop after this many steps")
    max_pixels: int | None = _opt(None, _at_least(1), "minibatch: stop after this many sampled pixels")
    max_epochs: float = _opt(20.0, _positive,
                             "minibatch: stop after sampling this many times the collection")
    max_iter: int = _opt(1000, _at_least(1), "exact Lloyd: maximum iterations per start")
    color_space: Literal["rgb", "oklab"] = _opt("rgb", doc="space the distances are measured in")
    reassignment_ratio: float = _opt(0.01, _non_negative,
                                     "MiniBatchKMeans reassignment of low-count centres")
    seed: int = _opt(0, lambda v: None if 0 <= v < 2**32 - 64 else "an integer in 0..2**32-65",
                     "random seed: same seed, same palette")
    checkpoint_steps: int = _opt(50, _at_least(1), "checkpoint every this many steps ...")
    checkpoint_seconds: float = _opt(30.0, _positive, "... or this many seconds")
    client_threads: int | None = _opt(None, _at_least(1),
                                      "OpenMP threads of the client's model update (default 1)")
    quality: tuple[float, float] | None = _opt(
        None, _quality, "[MIN, MAX] PSNR in dB: fit the smallest K of k_range whose exact "
        "Lloyd palette reaches MAX (colors and algorithm are then not used); fail (exit 99) "
        "when even the largest stays below MIN")
    k_range: tuple[int, int] = _opt((2, 256), _k_range, "quality: the K searched, [LO, HI]")
    fixed_colors: str | None = _opt(
        None, doc="palette source (.gpl, .act, .json, .hex, image or store) whose colours the "
                  "palette keeps exactly as its first entries; K counts them")


def _ks(v: Any) -> str | None:
    return None if all(2 <= k <= 256 for k in v) and len(set(v)) == len(v) else \
        "distinct integers from 2 to 256"


def _per_image_k_range(v: Any) -> str | None:
    lo, hi = v
    return None if 2 <= lo <= hi <= 256 else \
        "[LO, HI]: the K searched, integers with 2 <= LO <= HI <= 256, e.g. [2, 64]"


@dataclass(frozen=True)
class PerImageConfig:
    """One palette per image: the tutorial's k-means on a pixel sample, at collection scale."""

    enabled: bool = _opt(False, doc="streamq run: fit per-image palettes instead of a shared one")
    colors: tuple[int, ...] = _opt((2, 6, 30), _ks, "palette sizes; one result per K")
    sample: float = _opt(0.7, _fraction, "fraction of each image's pixels the k-means is fitted on")
    method: Literal["kmeans", "histogram"] = _opt(
        "kmeans", doc="kmeans: scikit-learn KMeans on the sample (the tutorial's, exactly); "
                      "histogram: the same k-means on the sample's distinct colours, compiled")
    init: Literal["k-means++", "random"] = _opt("k-means++", doc="initial centres method")
    n_init: int = _opt(1, _at_least(1), "k-means starts per image")
    seed: int = _opt(0, lambda v: None if 0 <= v < 2**32 else "an integer in 0..2**32-1",
                     "random seed of the samples and starts")
    pixels_per_task: int = _opt(4_000_000, _at_least(1), "image pixels one task fits at most "
                                "(a small collection gets about four tasks per worker)")
    fixed_colors: str | None = _opt(
        None, doc="histogram method: palette source whose colours every image's palette keeps "
                  "exactly as its first entries; each K counts them")
    quality: tuple[float, float] | None = _opt(
        None, _quality, "[MIN, MAX] PSNR in dB over each image's pixels: each image gets the "
        "smallest K of k_range whose palette reaches MAX (colors is then not used); an image "
        "below MIN even at the largest K is recorded, and the fit ends with exit status 99")
    k_range: tuple[int, int] = _opt((2, 256), _per_image_k_range,
                                    "quality: the K searched for each image, [LO, HI]")

    @property
    def groups(self) -> tuple[int, ...]:
        """The K groups a fit with these settings writes (``per_image/k{K}``): one per K of
        ``colors``, or with ``quality`` the one group HI (each image its own K, padded to HI)."""
        return (self.k_range[1],) if self.quality is not None else tuple(self.colors)


@dataclass(frozen=True)
class QuantizeConfig:
    """How pixels are labelled (see ``streamq.quantize``)."""

    palette: str | None = _opt(None, doc="a given palette instead of a fitted one (quantize "
                               "--palette): .gpl, .act, .json, .hex/.txt, an image or a store")
    color_space: Literal["rgb", "oklab"] | None = _opt(
        None, doc="palette: space distances are measured in (default: the source store's "
                  "fit's, else the store's fit's, else rgb)")
    ssim: bool = _opt(True, doc="SSIM of every image on its luma, beside MSE/PSNR "
                                "(see streamq.ssim); false (--no-ssim) labels faster")


@dataclass(frozen=True)
class ClusterImagesConfig:
    """How images are grouped by their colours (see ``streamq.groups``)."""

    enabled: bool = _opt(False, doc="streamq run: group the images after quantize")
    groups: int = _opt(8, _at_least(2), "number of image groups G")
    descriptor: Literal["histogram", "histogram+moments"] = _opt(
        "histogram", doc="histogram over the shared palette (K bins, sums to 1), optionally "
                         "followed by the mean and std of each RGB channel (/255)")
    moments_weight: float = _opt(1.0, _non_negative,
                                 "histogram+moments: factor on the six moments when clustering")
    init_size: int = _opt(10_000, _at_least(2),
                          "images in the k-means++ initial sample (every image when fewer)")
    n_init: int = _opt(3, _at_least(1), "k-means starts on the initial sample")
    batch_size: int = _opt(1024, _at_least(2), "images per partial_fit step")
    batches_per_task: int = _opt(4, _at_least(1), "batches drawn by one sampling task")
    blocks_per_task: int = _opt(16, _at_least(1), "descriptor chunks one sampling task reads")
    prefetch: int = _opt(4, _at_least(1), "sampling tasks in flight (ordered window)")
    tol: float = _opt(1e-4, _positive, "stop when the squared group centre shifts of a step sum "
                      "to at most tol times the descriptors' mean variance ...")
    patience: int = _opt(10, _at_least(1), "... for this many consecutive steps")
    max_steps: int = _opt(1000, _at_least(1), "stop after this many steps")
    max_epochs: float = _opt(20.0, _positive, "stop after sampling this many times every image")
    reassignment_ratio: float = _opt(0.01, _non_negative,
                                     "MiniBatchKMeans reassignment of low-count centres")
    seed: int = _opt(0, lambda v: None if 0 <= v < 2**32 - 64 else "an integer in 0..2**32-65",
                     "random seed: same seed, same groups")
    rows_per_chunk: int = _opt(1024, _at_least(1),
                               "images per chunk of the descriptor and result arrays")
    pixels_per_task: int = _opt(16_000_000, _at_least(1),
                                "image pixels one descriptor task reads at a time")
    checkpoint_steps: int = _opt(50, _at_least(1), "checkpoint every this many steps ...")
    checkpoint_seconds: float = _opt(30.0, _positive, "... or this many seconds")


def _export_ks(v: Any) -> str | None:
    ks = v if isinstance(v, tuple) else (v,)
    return None if all(k >= 2 for k in ks) else "integers >= 2"


@dataclass(frozen=True)
class ExportConfig:
    """How quantized images are written (see ``streamq.export``)."""

    out: str | None = _opt(None, doc="output folder or URL (s3://BUCKET/PATH)")
    zarr: bool = _opt(False, doc="write OUT as a Zarr store of labels + palette + image table "
                                 "instead of image files")
    per_image: int | tuple[int, ...] | None = _opt(
        None, _export_ks, "export the per-image result of this K (zarr: a list, one group each)")
    format: Literal["png", "jpeg", "webp"] = _opt("png", doc="png (palette PNG for K <= 256), jpeg or webp")
    dither: bool = _opt(False, doc="Floyd-Steinberg dithering")
    png_level: int = _opt(1, lambda v: None if 0 <= v <= 9 else "an integer in 0..9",
                          "zlib level of PNG files")
    quality: int = _opt(95, lambda v: None if 1 <= v <= 100 else "an integer in 1..100",
                        "JPEG/WebP quality")
    zarr_chunk_pixels: int | None = _opt(None, _at_least(1),
                                         "zarr: pixels per chunk of the labels (default: the store's)")


@dataclass(frozen=True)
class ReportConfig:
    """What ``streamq report`` shows (see ``streamq.report``)."""

    out: str | None = _opt(None, doc="HTML file to write; streamq run writes it at the end when set")
    samples: int = _opt(8, _at_least(0), "images shown before and after quantization")
    seed: int = _opt(0, _at_least(0), "seed of that sample")
    worst: int = _opt(10, _at_least(0), "worst images by PSNR listed with thumbnails, per result")
    top_labels: int = _opt(20, _at_least(1), "labels in the images-per-label chart")
    max_colors: int = _opt(256, _at_least(1), "palette swatches shown (most used first)")
    max_skipped: int = _opt(200, _at_least(0), "skipped inputs listed")
    group_samples: int = _opt(8, _at_least(0),
                              "images shown per image group, the nearest to its centre first")
    group_labels: int = _opt(10, _at_least(1),
                             "label columns of the groups x labels table; the rest make 'other'")
    max_groups: int = _opt(50, _at_least(1), "image groups shown with their images")


@dataclass(frozen=True)
class LockConfig:
    """The store's write lock (see ``streamq.lock``).

    A lock whose owner runs on another host is stale once its heartbeat is older than
    ``stale_after``; on the same host the owner's pid decides at once. Stores on an object
    store are locked with conditional writes; an endpoint without them is refused unless
    ``enabled`` is false (then make sure no other job writes the store).
    """

    stale_after: float = _opt(60.0, _positive,
                              "seconds without heartbeat after which another host's lock is stale")
    heartbeat: float = _opt(10.0, _positive, "seconds between heartbeats of a running job's lock")
    enabled: bool = _opt(True, doc="take the store's write lock; false (--no-lock) writes without "
                         "it, for an object store without conditional writes")


@dataclass(frozen=True)
class RetryConfig:
    """Reads and writes that fail for a reason outside the input (see ``streamq.faults``).

    An error such as EIO, EMFILE, ENOSPC, ESTALE or a MemoryError is retried, never recorded
    as a bad input; when the last try fails too, the stage stops with one line.
    """

    attempts: int = _opt(4, _at_least(1), "tries in all of a read or write that fails with a "
                         "transient error (EIO, EMFILE, ENOSPC, ESTALE, EAGAIN, MemoryError, ...)")
    wait: float = _opt(0.5, _non_negative,
                       "seconds before the second try; doubled before each next")


@dataclass(frozen=True)
class StreamQConfig:
    """The whole configuration, one section per stage."""

    store: str | None = _opt(None, doc="path or URL (s3://BUCKET/PATH) of the Zarr store")
    storage_options: dict[str, Any] = field(default_factory=dict, metadata={
        "check": None, "doc": "options of the filesystem of URL stores and outputs (s3fs: "
                              "endpoint_url, key, secret, anon, client_kwargs, ...)"})
    source_options: dict[str, Any] = field(default_factory=dict, metadata={
        "check": None, "doc": "options of the filesystem of a URL source (ingest.source: "
                              "s3://..., gs://..., a list of URLs); empty: storage_options when "
                              "the store is local or on the same kind of URL"})
    dask: DaskConfig = field(default_factory=DaskConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    per_image: PerImageConfig = field(default_factory=PerImageConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    cluster_images: ClusterImagesConfig = field(default_factory=ClusterImagesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)

