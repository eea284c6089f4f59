"""streamq: colour quantization of image collections larger than memory.

Data flow: ingest (files -> Zarr store) -> fit (palette) -> quantize (labels) -> export;
``cluster_images`` groups the images by their colours; ``report`` writes an HTML page of a
store at any stage.
``ingest_array`` makes a store from arrays, ``Collection.to_dask`` reads one as Dask arrays, and
``ColorQuantizer`` is the palette fit as a scikit-learn estimator.

Every name but ``__version__`` is imported on first use (PEP 562): ``import streamq``, and
each CLI command (a fresh process), load only the modules they touch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from streamq._version import __version__

if TYPE_CHECKING:
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
    from streamq.estimator import ColorQuantizer
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

#: Where each public name lives; imported by :func:`__getattr__` when first asked for.
_WHERE = {
    "Collection": "streamq.store",
    "ColorQuantizer": "streamq.estimator",
    "ConfigError": "streamq.errors",
    "ExportSummary": "streamq.export",
    "FitResult": "streamq.store.results",
    "ImageGroups": "streamq.store.image_groups",
    "IngestSummary": "streamq.ingest",
    "LockLostError": "streamq.errors",
    "Palette": "streamq.palettes",
    "PerImageSummary": "streamq.per_image",
    "QuantizeSummary": "streamq.quantize",
    "ReportSummary": "streamq.report",
    "RunReport": "streamq.pipeline",
    "StageNotReadyError": "streamq.errors",
    "StoreError": "streamq.errors",
    "StoreExistsError": "streamq.errors",
    "StoreLayoutError": "streamq.errors",
    "StoreLockedError": "streamq.errors",
    "StoreMismatchError": "streamq.errors",
    "StreamQConfig": "streamq.config",
    "StreamQError": "streamq.errors",
    "UpgradeSummary": "streamq.store.upgrade",
    "ZarrExportSummary": "streamq.export",
    "cluster_images": "streamq.groups",
    "collection_info": "streamq.store.overview",
    "collection_mse": "streamq.fit",
    "export": "streamq.export",
    "export_zarr": "streamq.export",
    "fit": "streamq.fit",
    "fit_per_image": "streamq.per_image",
    "ingest": "streamq.ingest",
    "ingest_array": "streamq.ingest",
    "load_config": "streamq.config",
    "load_fit": "streamq.store.results",
    "load_groups": "streamq.store.image_groups",
    "open_store": "streamq.store",
    "quantize": "streamq.quantize",
    "read_palette": "streamq.palettes",
    "report": "streamq.report",
    "run": "streamq.pipeline",
    "store_lock": "streamq.lock",
    "upgrade": "streamq.store.upgrade",
    "write_palette": "streamq.palettes",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'streamq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


class _Package(types.ModuleType):
    """``streamq`` itself. Five public functions share their name with the subpackage that
    holds them (``fit``, ``ingest``, ``quantize``, ``export``, ``report``); importing such a
    subpackage makes the import system set that name on ``streamq`` to the module, which
    would hide the function. The name stays the function's."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == f"{__name__}.{name}":
            return  # the subpackage stays reachable through sys.modules and imports
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
