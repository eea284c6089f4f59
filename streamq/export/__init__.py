"""Export: the quantized images out of a store (the last stage).

* :mod:`streamq.export.files` -- every image rebuilt from its labels and the palette, as
  files under OUT (PNG, JPEG, WebP), resumable with records (:func:`export`);
* :mod:`streamq.export.zarr` -- labels, palettes and the image table as one stand-alone Zarr
  store (``export(..., zarr=True)``, :func:`export_zarr`);
* :mod:`streamq.export.common` -- what both share: the manifest's name, the check of the
  output folder, its listing and the message of labels changed under an export.

One way only: ``files -> zarr -> common`` (``pyproject.toml``, ``export-family``).
"""

from streamq.export.files import (
    ExportSummary,
    export,
    name_key,
    output_names,
    recorded_files,
    safe_output_path,
)
from streamq.export.zarr import ZarrExportSummary, export_zarr

__all__ = ["ExportSummary", "ZarrExportSummary", "export", "export_zarr", "name_key",
           "output_names", "recorded_files", "safe_output_path"]
