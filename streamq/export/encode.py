"""One image file's bytes from its labels and palette (Pillow).

A palette PNG (mode ``P``) for K <= 256, else RGB; JPEG and WebP are RGB. ``dither``
re-quantizes the stored pixels to the palette with Floyd-Steinberg error diffusion (Pillow's,
nearest colour in RGB). A palette with alpha gives palette PNGs with a ``tRNS`` chunk (the
alpha of each entry up to the last transparent one), RGBA PNG and WebP files, and JPEG files
composited on the ingest's ``background``; ``dither`` with it diffuses the error in
premultiplied RGBA (:mod:`streamq.dither`), then writes the labels so found as above.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Encoder"]


@dataclass(frozen=True)
class Encoder:
    """How a task's images become file bytes: the format, Pillow's options, dithering, alpha."""

    format: str  # png, jpeg or webp
    options: dict[str, Any]  # Pillow's save options (compress_level, quality)
    dither: bool = False
    alpha: np.ndarray | None = None  # the palette's alpha (uint8), when it has one
    background: Sequence[int] = (255, 255, 255)  # JPEG: transparent pixels composited on it

    def encode(self, data: np.ndarray, height: int, width: int, palette: np.ndarray,
               pixel_alpha: np.ndarray | None = None) -> bytes:
        """The file of an image: ``data`` its labels (``height * width``), or its stored RGB
        pixels when dithering (with a palette with alpha: premultiplied, their alpha
        ``pixel_alpha``), and ``palette`` its (K, 3) uint8 colours."""
        from PIL import Image

        fmt, h, w = self.format, height, width
        k = len(palette)
        flat_pal = palette.reshape(-1).tolist()
        if self.dither and self.alpha is not None:  # error diffusion in premultiplied RGBA
            from streamq.dither import dither_rgba

            assert pixel_alpha is not None, "the pixels' alpha is read to dither with alpha"
            data = dither_rgba(data, pixel_alpha, h, w, palette, self.alpha).reshape(-1)
        if self.dither and self.alpha is None:
            pal_img = Image.new("P", (1, 1))
            pal_img.putpalette(flat_pal + flat_pal[-3:] * (256 - k))
            img = Image.fromarray(data.reshape(h, w, 3)).quantize(
                palette=pal_img, dither=Image.Dither.FLOYDSTEINBERG)
            if fmt != "png":
                img = img.convert("RGB")
        elif fmt == "png" and k <= 256:
            img = Image.fromarray(data.reshape(h, w).astype(np.uint8, copy=False))  # L ...
            img.putpalette(flat_pal)  # ... becomes P with the palette
        elif self.alpha is not None:
            img = _with_alpha(palette, self.alpha, data.reshape(h, w), fmt, self.background)
        else:
            img = Image.fromarray(palette[data.reshape(h, w)])
        trns = _trns(self.alpha) if fmt == "png" and img.mode == "P" else {}
        return _encode(img, fmt, {**self.options, **trns})


def _encode(img: Any, fmt: str, options: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper() if fmt != "jpeg" else "JPEG", **options)
    return buf.getvalue()


def _trns(alpha: np.ndarray | None) -> dict[str, Any]:
    """Pillow's option for a palette PNG's ``tRNS`` chunk: the alpha of every entry up to the
    last one below 255 (none when every entry is opaque)."""
    if alpha is None or not (alpha < 255).any():
        return {}
    last = int(np.flatnonzero(alpha < 255)[-1])
    return {"transparency": bytes(alpha[:last + 1].tolist())}


def _with_alpha(palette: np.ndarray, alpha: np.ndarray, labels: np.ndarray, fmt: str,
                background: Sequence[int]) -> Any:
    """An image of straight colours ``palette`` with ``alpha``: RGBA, or for JPEG the
    colours composited on ``background`` (as ingest's ``alpha: flatten``)."""
    from PIL import Image

    rgba = np.concatenate([palette, alpha[:, None]], axis=1)[labels]
    if fmt == "jpeg":
        c, a = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
        bg = np.asarray(background, dtype=np.uint32)
        return Image.fromarray(((c * a + bg * (255 - a) + 127) // 255).astype(np.uint8))
    return Image.fromarray(rgba, mode="RGBA")
