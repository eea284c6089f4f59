"""streamq: colour quantization of image collections larger than memory.

Data flow: ingest (files -> Zarr store) -> fit (palette) -> quantize (labels) -> export;
``cluster_images`` groups the images by their colours; ``report`` writes an HTML page of a
store at any stage.
``ingest_array`` makes a store from arrays, ``Collection.to_dask`` reads one as Dask arrays, and
``ColorQuantizer`` is the palette fit as a scikit-learn estimator.
"""

from streamq._version import __version__
from streamq.config import StreamQConfig, load_config
from streamq.errors import (
    ConfigError,
    LockLostError,
    StageNotReadyError,
    StoreError,
    StoreExistsError,
    StoreLayoutError,
    StoreLockedError,
    StoreMismatchError,
    StreamQError,
)
from streamq.export import ExportSummary, ZarrExportSummary, export, export_zarr
from streamq.fit import collection_mse, fit
from streamq.groups import cluster_images
from streamq.ingest import IngestSummary, ingest, ingest_array
from streamq.lock import store_lock
from streamq.palettes import Palette, read_palette, write_palette
from streamq.per_image import PerImageSummary, fit_per_image
from streamq.pipeline import RunReport, run
from streamq.quantize import QuantizeSummary, quantize
from streamq.report import ReportSummary, report
from streamq.store import Collection, open_store
from streamq.store.image_groups import ImageGroups, load_groups
from streamq.store.overview import collection_info
from streamq.store.results import FitResult, load_fit
from streamq.store.upgrade import UpgradeSummary, upgrade


def __getattr__(name: str) -> object:
    if name == "ColorQuantizer":  # imports scikit-learn: only when asked for
        from streamq.estimator import ColorQuantizer

        return ColorQuantizer
    raise AttributeError(f"module 'streamq' has no attribute {name!r}")

__all__ = [
    "Collection",
    "ColorQuantizer",
    "ExportSummary",
    "PerImageSummary",
    "QuantizeSummary",
    "ReportSummary",
    "RunReport",
    "FitResult",
    "ImageGroups",
    "ConfigError",
    "IngestSummary",
    "LockLostError",
    "Palette",
    "StageNotReadyError",
    "StoreError",
    "StoreExistsError",
    "StoreLayoutError",
    "StoreLockedError",
    "StoreMismatchError",
    "StreamQConfig",
    "StreamQError",
    "UpgradeSummary",
    "ZarrExportSummary",
    "__version__",
    "cluster_images",
    "collection_info",
    "collection_mse",
    "export",
    "export_zarr",
    "fit",
    "fit_per_image",
    "ingest",
    "ingest_array",
    "load_config",
    "load_fit",
    "load_groups",
    "open_store",
    "quantize",
    "read_palette",
    "report",
    "run",
    "store_lock",
    "upgrade",
    "write_palette",
]
