"""Quantize: a palette label for every pixel (the stage after the fit).

* :mod:`streamq.quantize.shared` -- labels with the store's shared palette, chunk by chunk,
  MSE/PSNR and SSIM per image (:func:`quantize`, which also runs the two below when asked);
* :mod:`streamq.quantize.per_image` -- labels with each image's own palettes
  (``fit --per-image``), for every fitted K;
* :mod:`streamq.quantize.remap` -- a given palette (file, image or store) made the store's
  shared palette (``quantize --palette``).

One way only: ``shared -> per_image, remap`` (``pyproject.toml``, ``quantize-family``).
"""

from streamq.quantize.per_image import quantize_per_image
from streamq.quantize.remap import use_palette
from streamq.quantize.shared import QuantizeSummary, labels_dtype, quantize

__all__ = ["QuantizeSummary", "labels_dtype", "quantize", "quantize_per_image", "use_palette"]
