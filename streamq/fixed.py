"""Fixed colours: colours a fitted palette keeps exactly (brand colours, pure white or black).

``streamq fit ... --fixed-colors SRC`` (config keys ``fit.fixed_colors`` and
``per_image.fixed_colors``) reads SRC with :func:`streamq.palettes.read_palette`, so any
palette source works: a ``.gpl``, ``.act``, JSON or hex list file, an image or another store.

* **Distinct.** A colour that repeats an earlier one of SRC is dropped (the first is kept,
  the log says how many went), so the zero padding of a 768-byte ``.act`` costs one entry.
* **Where.** The ``F`` distinct colours are the palette's first ``F`` entries, in SRC's
  order; k-means fits the other ``K - F``. ``K`` counts them: ``K = 64`` with 8 fixed
  colours fits 56. ``F >= K`` is a one-line error.
* **Exact.** In the fit's colour space a fixed colour is the point its sRGB value maps to
  (the same point as the collection's pixels of that colour); the k-means core never moves
  it (:mod:`streamq.kmeans`: a ``fixed`` mask in Lloyd, k-means++ seeded from the fixed
  centres, and the mini-batch model's fixed centres put back after every step), and the
  stored palette holds the given uint8 values, in RGB as in OKLab.
* **Alpha.** For a collection with alpha (:mod:`streamq.fit.alpha`, per-image palettes of
  images with alpha) a fixed colour has an alpha: ``#rrggbbaa`` or ``[r, g, b, a]`` give it,
  any other colour is opaque (255). Its point is its premultiplied RGBA colour in the metric
  space of :mod:`streamq.rgba` (the point of the collection's pixels of that colour), held
  by the RGBA k-means; the stored palette holds the given straight colour and alpha. Colours
  are distinct by their premultiplied value (every fully transparent colour is one point).
  An opaque collection takes the colours without their alpha, as before.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamq.errors import ConfigError

__all__ = ["FixedColors", "read_fixed_colors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FixedColors:
    """The distinct fixed colours of a source, in its order."""

    rgb: np.ndarray  # (F, 3) uint8 sRGB (straight, not premultiplied)
    source: dict[str, Any]  # where they came from (streamq.palettes' description)
    alpha: np.ndarray | None = None  # (F,) uint8 alpha, read for a collection with alpha

    @property
    def n(self) -> int:
        return len(self.rgb)

    @property
    def sha256(self) -> str:
        from streamq.palettes import colors_sha256

        if self.alpha is None:  # an opaque collection's fingerprint, as before alpha
            return colors_sha256(self.rgb)
        return colors_sha256(self.rgba())

    def rgba(self) -> np.ndarray:
        """``(F, 4)`` uint8 straight RGBA (alpha 255 when none was read)."""
        a = np.full(self.n, 255, np.uint8) if self.alpha is None else self.alpha
        return np.concatenate([self.rgb, a[:, None]], axis=1)

    def premultiplied(self) -> np.ndarray:
        """``(F, 4)`` uint8 premultiplied RGBA, as ingest stores a pixel of that colour."""
        from streamq.rgba import premultiplied

        return premultiplied(self.rgb, self.rgba()[:, 3])

    def centers(self, space: str) -> np.ndarray:
        """``(F, 3)`` float64 points in colour space ``space``, as the fit computes the
        points of the collection's colours."""
        from streamq.colorspace import to_space

        return to_space(self.rgb, space).astype(np.float64)

    def record(self) -> dict[str, Any]:
        """JSON-ready description for the store (``info`` and the report show it)."""
        return {"n": self.n, "positions": f"0..{self.n - 1}", "sha256": self.sha256,
                "colors": [f"#{r:02x}{g:02x}{b:02x}" + (f"{a:02x}" if a < 255 else "")
                           for r, g, b, a in self.rgba().tolist()],
                "source": self.source}

    def describe(self) -> str:
        from streamq.palettes import describe_source

        return f"{self.n} fixed colours (entries 0..{self.n - 1}) from {describe_source(self.source)}"


def read_fixed_colors(src: str | os.PathLike[str], colors: int, *, key: str = "fit.fixed_colors",
                      storage_options: dict[str, Any] | None = None,
                      with_alpha: bool = False) -> FixedColors:
    """The fixed colours of ``src`` for a palette of ``colors`` entries (the smallest K of a
    per-image list); ``key`` names the setting in errors. ``with_alpha`` (a collection with
    alpha): the colours keep their alpha (255 where ``src`` gives none) and are distinct by
    their premultiplied RGBA value.

    Raises
    ------
    ConfigError
        One line: ``src`` cannot be read as a palette, or holds ``colors`` or more distinct
        colours.
    """
    from streamq.palettes import read_palette

    text = os.fspath(src)
    try:
        pal = read_palette(text, storage_options=storage_options)
    except ConfigError as exc:
        raise ConfigError(f"fixed colours (key '{key}'): {exc}") from None
    alpha = None
    if with_alpha:
        from streamq.rgba import premultiplied

        alpha = np.full(pal.k, 255, np.uint8) if pal.alpha is None else pal.alpha
        ident = premultiplied(pal.colors, alpha)
    else:
        ident = pal.colors
    _, first = np.unique(ident, axis=0, return_index=True)
    keep = np.sort(first)
    if len(keep) < pal.k:
        log.warning("fixed colours %s: %d of its %d colours repeat an earlier one; kept the first "
                    "of each, %d fixed colours", text, pal.k - len(keep), pal.k, len(keep))
    rgb = np.ascontiguousarray(pal.colors[keep])
    if len(rgb) >= colors:
        raise ConfigError(
            f"fixed colours {text} (key '{key}'): {len(rgb)} distinct colours, expected fewer "
            f"than colors={colors} (K counts the fixed colours; the fit chooses the other K - F)")
    return FixedColors(rgb, pal.source,
                       None if alpha is None else np.ascontiguousarray(alpha[keep]))
