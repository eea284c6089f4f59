"""Floyd–Steinberg error diffusion in premultiplied RGBA: ``export --dither`` of a palette with alpha.

Pillow's dithering (the RGB export's) knows no alpha. Here an image's pixels, premultiplied
RGBA as the store holds them (:mod:`streamq.rgba`), are visited in raster order; each takes its
value plus the error diffused to it and, that value clipped to a valid premultiplied colour
(alpha in 0..255, each colour channel in 0..alpha), the palette entry nearest it by the distance of
:mod:`streamq.rgba` — the mean of the squared errors of the two composites, on black and on
white, ``Σ_c (Δc − Δa/2)² + 3Δa²/4`` — the first entry on ties, as the un-dithered labels
are chosen; its error (the value before clipping minus the entry's premultiplied colour,
four channels, each clamped to ±``LIMIT``) goes 7/16 right, 3/16 down-left, 5/16 down and
1/16 down-right. The error is taken before clipping so that what clipping cuts off is not
lost: an opaque area whose nearest entries are a little transparent would otherwise drift
towards transparency (its positive alpha error cut at 255 every time); the clamp keeps an
area outside the palette's hull from piling up error without bound.

Fully transparent pixels (alpha 0) take the entry nearest ``(0, 0, 0, 0)`` (the fit's pinned
transparent entry) and neither take nor give error, as libimagequant leaves them: a
transparent background stays transparent and its edges do not bleed into it.

No I/O: arrays in, labels out.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["LIMIT", "dither_rgba"]

LIMIT = 64.0  # the error a pixel passes on, per channel (uint8 units), is clamped to this


@numba.njit(nogil=True, cache=True)
def _nearest(v: np.ndarray, pal: np.ndarray) -> int:
    best, best_d = 0, np.inf
    for j in range(pal.shape[0]):
        da = v[3] - pal[j, 3]
        d = 0.75 * da * da
        for c in range(3):
            e = v[c] - pal[j, c] - da / 2.0
            d += e * e
        if d < best_d:
            best, best_d = j, d
    return best


@numba.njit(nogil=True, cache=True)
def _diffuse(px: np.ndarray, pal: np.ndarray, clear: int, labels: np.ndarray) -> None:
    h, w = px.shape[0], px.shape[1]
    err = np.zeros((2, w + 2, 4))  # this row and the next, one column of margin each side
    v = np.empty(4)
    u = np.empty(4)
    for y in range(h):
        cur, nxt = err[y % 2], err[(y + 1) % 2]
        nxt[:, :] = 0.0
        for x in range(w):
            if px[y, x, 3] == 0:
                labels[y, x] = clear
                continue
            for c in range(4):
                u[c] = px[y, x, c] + cur[x + 1, c]
            v[3] = min(255.0, max(0.0, u[3]))
            for c in range(3):
                v[c] = min(v[3], max(0.0, u[c]))
            j = _nearest(v, pal)
            labels[y, x] = j
            for c in range(4):
                e = min(LIMIT, max(-LIMIT, u[c] - pal[j, c]))
                if x + 1 < w and px[y, x + 1, 3] != 0:
                    cur[x + 2, c] += e * 7.0 / 16.0
                if y + 1 < h:
                    if x > 0 and px[y + 1, x - 1, 3] != 0:
                        nxt[x, c] += e * 3.0 / 16.0
                    if px[y + 1, x, 3] != 0:
                        nxt[x + 1, c] += e * 5.0 / 16.0
                    if x + 1 < w and px[y + 1, x + 1, 3] != 0:
                        nxt[x + 2, c] += e * 1.0 / 16.0


def dither_rgba(pixels: np.ndarray, alpha: np.ndarray, height: int, width: int,
                palette: np.ndarray, palette_alpha: np.ndarray) -> np.ndarray:
    """Labels ``(height, width)`` (uint8 for K <= 256, else int64) of an image dithered to
    a palette with alpha (see the module docstring): ``pixels`` ``(n, 3)`` premultiplied
    uint8 and ``alpha`` ``(n,)``, the palette's straight colours ``(K, 3)`` and alphas."""
    from streamq.rgba import premultiplied

    px = np.concatenate([np.asarray(pixels, np.uint8).reshape(-1, 3),
                         np.asarray(alpha, np.uint8).reshape(-1, 1)], axis=1)
    px = np.ascontiguousarray(px.reshape(height, width, 4).astype(np.float64))
    pal = np.ascontiguousarray(premultiplied(palette, palette_alpha).astype(np.float64))
    clear = int(_nearest(np.zeros(4), pal))
    labels = np.empty((height, width), np.uint8 if len(pal) <= 256 else np.int64)
    _diffuse(px, pal, clear, labels)
    return labels
