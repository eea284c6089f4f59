"""Export: the quantized images out of a store (the last stage).

Image files (:func:`export`):

* :mod:`streamq.export.files` -- the driver: options, the chosen images, their files' names,
  the tasks;
* :mod:`streamq.export.paths` -- where each image's file goes: safe paths inside OUT, names no
  file system takes for one file;
* :mod:`streamq.export.write` -- the task: reads labels, writes the files, records them;
* :mod:`streamq.export.encode` -- one image file's bytes from its labels and palette (Pillow);
* :mod:`streamq.export.tiff` -- an image over max_pixels as a tiled BigTIFF, a row of tiles at
  a time (tifffile);
* :mod:`streamq.export.records` -- OUT's manifest and completion records.

Arrays, a stand-alone Zarr store (``export(..., zarr=True)``, :func:`export_zarr`):

* :mod:`streamq.export.zarr` -- the driver;
* :mod:`streamq.export.zarr_plan` -- what the export holds: its results, the labels' layout;
* :mod:`streamq.export.zarr_out` -- what is at OUT: refused, replaced, created or reopened;
* :mod:`streamq.export.zarr_tables` -- the image table and palettes, written by the client;
* :mod:`streamq.export.zarr_copy` -- the tasks: one chunk of labels each, then its record.

Both: :mod:`streamq.export.common` -- the manifest's name, the check of the output folder and
the message of labels changed under an export.

One way only (``pyproject.toml``, ``export-package``): ``files`` -> ``zarr`` -> the task
modules and ``zarr_out``, ``zarr_tables`` -> ``encode``, ``tiff``, ``records``, ``paths``,
``zarr_plan`` -> ``common``.
"""

from streamq.export.files import ExportSummary, export
from streamq.export.paths import name_key, output_names, safe_output_path
from streamq.export.records import recorded_files
from streamq.export.zarr import ZarrExportSummary, export_zarr

__all__ = ["ExportSummary", "ZarrExportSummary", "export", "export_zarr", "name_key",
           "output_names", "recorded_files", "safe_output_path"]
