"""streamq: colour quantization of image collections larger than memory.

Data flow: ingest (files -> Zarr store) -> fit (palette) -> quantize (labels) -> export;
``cluster_images`` groups the images by their colours; ``report`` writes an HTML page of a
store at any stage.
"""

from streamq._version import __version__
from streamq.config import StreamQConfig, load_config
from streamq.errors import (
    ConfigError,
    LockLostError,
    StoreError,
    StoreExistsError,
    StoreLayoutError,
    StoreLockedError,
    StoreMismatchError,
    StreamQError,
)
from streamq.export import ExportSummary, export
from streamq.export_zarr import ZarrExportSummary, export_zarr
from streamq.fit import FitResult, collection_mse, fit, load_fit
from streamq.groups import ImageGroups, cluster_images, load_groups
from streamq.info import collection_info
from streamq.ingest import IngestSummary, ingest
from streamq.lock import store_lock
from streamq.palettes import Palette, read_palette, write_palette
from streamq.per_image import PerImageSummary, fit_per_image
from streamq.pipeline import RunReport, run
from streamq.quantize import QuantizeSummary, quantize
from streamq.report import ReportSummary, report
from streamq.store import Collection, open_store

__all__ = [
    "Collection",
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
    "StoreError",
    "StoreExistsError",
    "StoreLayoutError",
    "StoreLockedError",
    "StoreMismatchError",
    "StreamQConfig",
    "StreamQError",
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
    "load_config",
    "load_fit",
    "load_groups",
    "open_store",
    "quantize",
    "read_palette",
    "report",
    "run",
    "store_lock",
    "write_palette",
]
