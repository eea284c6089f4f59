"""Example collections cut from real photos that ship inside installed packages.

No download is needed: scikit-learn ships ``china.jpg`` and ``flower.jpg``, matplotlib
ships ``grace_hopper.jpg``, and scikit-image (optional) ships a dozen more. Crops are
written as an LFW-shaped tree ``<Name>/<Name>_NNNN.jpg``; the number of images per name is
skewed like LFW's (a few names with many images, many with one or two).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_collection", "source_photos"]


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(name))

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(name, asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"))

    return load


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return np.ascontiguousarray(img[..., :3])

    return load


_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "China_Temple": _sklearn("china.jpg"),
    "Flower": _sklearn("flower.jpg"),
    "Grace_Hopper": _matplotlib("grace_hopper.jpg"),
    "Astronaut": _skimage("astronaut"),
    "Coffee": _skimage("coffee"),
    "Chelsea": _skimage("chelsea"),
    "Rocket": _skimage("rocket"),
    "Retina": _skimage("retina"),
    "Hubble_Deep_Field": _skimage("hubble_deep_field"),
    "Motorcycle": _skimage("motorcycle_left"),
    "Coins": _skimage("coins"),
}


def source_photos() -> dict[str, np.ndarray]:
    """Every bundled photo that can be loaded here, by name (RGB uint8)."""
    out = {}
    for name, load in _SOURCES.items():
        try:
            out[name] = load()
        except Exception:  # an optional package is missing or ships fewer images
            continue
    return out


def make_collection(out: str | os.PathLike[str], n_images: int = 60, *, seed: int = 0,
                    size: int | tuple[int, int] | None = None, min_side: int = 40,
                    max_side: int = 250, quality: int = 90,
                    names: list[str] | None = None) -> list[Path]:
    """Write ``n_images`` random crops as ``out/<Name>/<Name>_NNNN.jpg`` and return their paths.

    Parameters
    ----------
    size : int or (height, width), optional
        Fixed crop size (LFW uses 250); default: random sides in ``[min_side, max_side]``.
    names : list of str, optional
        Restrict to these source photos (see :func:`source_photos`).
    """
    photos = source_photos()
    if names is not None:
        photos = {k: v for k, v in photos.items() if k in names}
    if not photos:
        raise RuntimeError("no bundled photos found (is scikit-learn installed?)")
    keys = sorted(photos)
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(keys) + 1) ** 1.2  # LFW-like skew
    weights /= weights.sum()
    order = rng.permutation(len(keys))
    counts: dict[str, int] = {}
    written = []
    root = Path(out)
    for _ in range(n_images):
        name = keys[order[rng.choice(len(keys), p=weights)]]
        photo = photos[name]
        ph, pw = photo.shape[:2]
        if size is None:
            h = int(rng.integers(min_side, max_side + 1))
            w = int(rng.integers(min_side, max_side + 1))
        else:
            h, w = (size, size) if isinstance(size, int) else size
        h, w = min(h, ph), min(w, pw)
        y = int(rng.integers(0, ph - h + 1))
        x = int(rng.integers(0, pw - w + 1))
        crop = photo[y:y + h, x:x + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        counts[name] = counts.get(name, 0) + 1
        path = root / name / f"{name}_{counts[name]:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=quality)
        written.append(path)
    return written


def write_mosaic(path: str | os.PathLike[str], height: int, width: int, *, seed: int = 0,
                 tile: int = 256, cell: tuple[int, int] = (288, 384), level: int = 1) -> None:
    """A tiled BigTIFF ``(height, width)`` RGB mosaic of crops of the bundled photos (one crop
    per ``cell``, from a random photo at a random place), written one row of tiles at a time
    (never whole in memory), deflate-compressed at ``level``."""
    import tifffile

    photos = [p for p in source_photos().values()
              if p.shape[0] >= cell[0] and p.shape[1] >= cell[1]]
    rng = np.random.default_rng(seed)
    rows, cols = -(-height // cell[0]), -(-width // cell[1])
    which = rng.integers(0, len(photos), (rows, cols))
    fy, fx = rng.random((rows, cols)), rng.random((rows, cols))
    n_tx = -(-width // tile)

    def tiles() -> Iterator[np.ndarray]:
        for ty in range(0, height, tile):
            band = np.zeros((tile, n_tx * tile, 3), np.uint8)
            for r in range(ty // cell[0], min(rows, -(-(ty + tile) // cell[0]))):
                y0, y1 = max(ty, r * cell[0]), min(ty + tile, (r + 1) * cell[0], height)
                for c in range(cols):
                    p = photos[which[r, c]]
                    oy = int(fy[r, c] * (p.shape[0] - cell[0]))
                    ox = int(fx[r, c] * (p.shape[1] - cell[1]))
                    x0, x1 = c * cell[1], min((c + 1) * cell[1], width)
                    band[y0 - ty:y1 - ty, x0:x1] = p[oy + y0 - r * cell[0]:oy + y1 - r * cell[0],
                                                     ox:ox + x1 - x0]
            for tx in range(n_tx):
                yield band[:, tx * tile:(tx + 1) * tile]

    tifffile.imwrite(path, tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", bigtiff=True, compression="zlib",
                     compressionargs={"level": level})
