"""Colour spaces the palette can be fitted in: ``rgb`` (default) and ``oklab``.

Pixels are stored as sRGB uint8. :func:`to_space` maps them to float32 coordinates in which
k-means measures distances: ``rgb`` is ``value / 255`` (so ``tol`` is in [0, 1] units);
``oklab`` is Björn Ottosson's perceptual Oklab (L in [0, 1]). :func:`to_rgb8` maps centres
back to the sRGB uint8 palette that is always stored beside them.

``rgb8`` is not a fit's space but the one a given palette's own colours are labelled in
(``quantize --palette``, :meth:`streamq.store.results.FitResult.label_space`): the uint8 values as
floats, so squared distances are exact integers and equal distances tie exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SPACES", "to_rgb8", "to_rgb_float", "to_space"]

SPACES = ("rgb", "oklab")

_M1 = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                [0.2119034982, 0.6806995451, 0.1073969566],
                [0.0883024619, 0.2817188376, 0.6299787005]])
_M2 = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                [1.9779984951, -2.4285922050, 0.4505937099],
                [0.0259040371, 0.7827717662, -0.8086757660]])
_M2_INV = np.linalg.inv(_M2)
_M1_INV = np.linalg.inv(_M1)


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


_LINEAR_LUT = _srgb_to_linear(np.arange(256) / 255.0)


def to_space(rgb8: np.ndarray, space: str) -> np.ndarray:
    """``(n, 3)`` uint8 sRGB pixels to float32 coordinates in ``space``."""
    if space == "rgb":
        return rgb8.astype(np.float32) * np.float32(1 / 255)
    if space == "rgb8":
        return rgb8.astype(np.float32)
    if space == "oklab":
        lin = _LINEAR_LUT[rgb8]
        lms = np.cbrt(lin @ _M1.T)
        return (lms @ _M2.T).astype(np.float32)
    raise ValueError(f"unknown colour space {space!r}, expected one of {SPACES}")


def to_rgb_float(x: np.ndarray, space: str) -> np.ndarray:
    """Coordinates in ``space`` back to sRGB floats in [0, 255] (clipped)."""
    x = np.asarray(x, dtype=np.float64)
    if space == "rgb":
        return np.clip(x * 255.0, 0, 255)
    if space == "rgb8":
        return np.clip(x, 0, 255)
    if space == "oklab":
        lms = (x @ _M2_INV.T) ** 3
        return _linear_to_srgb(lms @ _M1_INV.T) * 255.0
    raise ValueError(f"unknown colour space {space!r}, expected one of {SPACES}")


def to_rgb8(x: np.ndarray, space: str) -> np.ndarray:
    """Centres in ``space`` to the nearest sRGB uint8 colours."""
    return np.round(to_rgb_float(x, space)).astype(np.uint8)
