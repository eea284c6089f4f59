"""The benchmark photo collection: LFW-shaped JPEG tiles cut from 50 real photographs.

The bundled example collection (:func:`streamq.examples.make_collection`) is cut from about
ten photos, too few colours to test a palette fit. This one is cut from 50 photographs
(no vector art, renders, paintings or logos) shipped by Debian wallpaper packages and by
Python packages that are installed anyway:

- ``mate-backgrounds``: the 12 photos of ``/usr/share/backgrounds/mate/nature``;
- ``lomiri-wallpapers-16.04``: 13 photos of the Ubuntu wallpaper contests;
- ``lomiri-wallpapers-20.04``: 1 photo (the others are renders);
- ``plasma-workspace-wallpapers``: 11 photos (the others are vector art or renders);
- scikit-image ``skimage.data``: 10 photos (8 colour, 2 grey);
- scikit-learn ``load_sample_images()``: 2 photos; matplotlib: ``grace_hopper.jpg``.

Every photo gives its tiles one label (folder) ``<Name>``; tile ``j`` of the collection
comes from photo ``j mod 50`` (so photos get equal shares), a square window of random side
(log-uniform between ``size`` and the photo's short side: from 1:1 crops to the whole
photo), at a random place, flipped left-right half the time, resized to ``size`` x ``size``
(Lanczos) and saved as ``<Name>/<Name>_NNNN.jpg`` at JPEG quality 90. Each tile's random
numbers come from ``(seed, j)`` alone, so the collection is the same whatever the number of
processes that build it.

Run as root, a missing apt package is installed (``apt-get install``); otherwise the error
names the command. From the repository root::

    python benchmarks/photos.py --out /tmp/streamq-bench            # 13,233 tiles of 250 px
    python benchmarks/photos.py --out /tmp/x --images 500 --no-colors
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["PHOTOS", "Photo", "build_photo_collection", "collection_colors", "ensure_photos",
           "load_photo"]

_DONE = ".complete"
_STATS = "colors.json"


@dataclass(frozen=True)
class Photo:
    """One source photograph: a file of a Debian package, or a loader of a Python package."""

    name: str  # label of its tiles (folder name)
    source: str  # "apt", "skimage", "sklearn" or "matplotlib"
    ref: str  # file path (apt), or the name inside the Python package
    package: str  # the apt or Python package that ships it


_MATE = "/usr/share/backgrounds/mate/nature"
_BG = "/usr/share/backgrounds"
_KDE = "/usr/share/wallpapers"

PHOTOS: tuple[Photo, ...] = (
    # mate-backgrounds: every photo of the "nature" set
    *(Photo(f"Mate_{n}", "apt", f"{_MATE}/{n}.jpg", "mate-backgrounds")
      for n in ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
                "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")),
    # lomiri-wallpapers-16.04: Ubuntu wallpaper contest photos (not umang, analogpattern)
    *(Photo(f"Ubuntu_{n}", "apt", f"{_BG}/{f}.jpg", "lomiri-wallpapers-16.04")
      for n, f in (("Bridge", "Bridge_by_Sander_Klootwijk"), ("Dragonfly", "Dragonfly_by_Bolly"),
                   ("Fig", "Picture_0B_by_freespace"), ("Brushes", "Picture_1A_by_freespace"),
                   ("Wine", "Wine_by_Jakkub_Mede"),
                   ("Aitzgorri", "aitzgorri_by_Aitzol_Berasategi"),
                   ("Free", "free_by_Peter_Nerlich"),
                   ("Friends", "friends_by_Aitzol_Berasategi"),
                   ("Greentock", "greentock_by_Peter_Nerlich"),
                   ("Life", "life_by_Aitzol_Berasategi"),
                   ("Picos_de_Europa", "picosdeeuropa_by_Aitzol_Berasategi"),
                   ("Seeding", "seeding_by_Clements_Engelhardt"),
                   ("Sunset", "sunset_by_Aitzol_Berasategi"))),
    # lomiri-wallpapers-20.04: the one photo (Fossa, Infinite-Sea, Painting-Colors are renders)
    Photo("Ubuntu_Kleiber", "apt", f"{_BG}/Kleiber_by_Lukas_Baubkus.jpg", "lomiri-wallpapers-20.04"),
    # plasma-workspace-wallpapers: the photos (the rest are vector art, renders, a painting)
    *(Photo(f"Plasma_{n}", "apt", f"{_KDE}/{n}/contents/images/2560x1600.jpg",
            "plasma-workspace-wallpapers")
      for n in ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
                "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")),
    # Python packages
    *(Photo(f"Skimage_{n}", "skimage", n, "scikit-image")
      for n in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
                "immunohistochemistry", "stereo_motorcycle", "camera", "coins")),
    Photo("Sklearn_china", "sklearn", "china.jpg", "scikit-learn"),
    Photo("Sklearn_flower", "sklearn", "flower.jpg", "scikit-learn"),
    Photo("Matplotlib_grace_hopper", "matplotlib", "grace_hopper.jpg", "matplotlib"),
)


def apt_packages(photos: tuple[Photo, ...] = PHOTOS) -> list[str]:
    return sorted({p.package for p in photos if p.source == "apt"})


def ensure_photos(photos: tuple[Photo, ...] = PHOTOS) -> None:
    """Install the apt packages of missing photo files (as root), or raise naming the command."""
    missing = sorted({p.package for p in photos if p.source == "apt" and not Path(p.ref).is_file()})
    if missing:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if os.geteuid() != 0:
            raise RuntimeError(f"photo files missing: run `sudo {' '.join(cmd)}`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {' '.join(missing)}", flush=True)
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, check=True)
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    gone = [p.ref for p in photos if p.source == "apt" and not Path(p.ref).is_file()]
    if gone:  # another version of a package ships other files
        raise RuntimeError(f"photo files not shipped by the installed packages: {', '.join(gone)}")


def load_photo(photo: Photo) -> np.ndarray:
    """The photo as an ``(h, w, 3)`` uint8 RGB array (grey photos replicated to 3 channels)."""
    if photo.source == "apt":
        with Image.open(photo.ref) as im:
            img = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    elif photo.source == "skimage":
        import skimage.data

        img = getattr(skimage.data, photo.ref)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
    elif photo.source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = np.asarray(load_sample_image(photo.ref))
    elif photo.source == "matplotlib":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(photo.ref, asfileobj=False)) as im:
            img = np.asarray(im.convert("RGB"))
    else:
        raise ValueError(f"unknown photo source {photo.source!r}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3], dtype=np.uint8)


def _fingerprint(photos: tuple[Photo, ...], n_images: int, size: int, seed: int,
                 quality: int) -> str:
    text = json.dumps([[p.name, p.source, p.ref] for p in photos] + [n_images, size, seed, quality])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cut(args: tuple[Photo, list[int], Path, int, int, int]) -> int:
    """Write the tiles ``ids`` (collection-wide indices) of one photo; returns their count."""
    photo, ids, root, size, seed, quality = args
    im = Image.fromarray(load_photo(photo))
    w, h = im.size
    short = min(w, h)
    folder = root / photo.name
    folder.mkdir(parents=True, exist_ok=True)
    for n, j in enumerate(ids, 1):
        rng = np.random.default_rng([seed, j])
        side = short if short <= size else int(round(size * (short / size) ** rng.random()))
        x = int(rng.integers(0, w - side + 1))
        y = int(rng.integers(0, h - side + 1))
        tile = im.resize((size, size), Image.Resampling.LANCZOS, box=(x, y, x + side, y + side),
                         reducing_gap=3.0)
        if rng.random() < 0.5:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tile.save(folder / f"{photo.name}_{n:04d}.jpg", quality=quality)
    return len(ids)


def build_photo_collection(workdir: str | os.PathLike[str], n_images: int = 13233,
                           size: int = 250, seed: int = 0, *, quality: int = 90,
                           procs: int | None = None,
                           photos: tuple[Photo, ...] = PHOTOS) -> Path:
    """The LFW-shaped tile folder ``workdir/photoset-N-SIZE-sSEED`` (built once, cached).

    ``n_images`` tiles of ``size`` x ``size`` pixels, spread evenly over ``photos`` (see the
    module's docstring), built on ``procs`` processes (default: every core). A folder whose
    marker file matches the parameters and photo list is returned as is.
    """
    root = Path(workdir) / f"photoset-{n_images}-{size}-s{seed}"
    marker = root / _DONE
    fp = _fingerprint(photos, n_images, size, seed, quality)
    if marker.is_file() and marker.read_text().strip() == fp:
        return root
    ensure_photos(photos)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    ids: list[list[int]] = [[] for _ in photos]
    for j in range(n_images):
        ids[j % len(photos)].append(j)
    tasks = [(p, i, root, size, seed, quality) for p, i in zip(photos, ids, strict=True) if i]
    procs = max(1, min(procs or os.cpu_count() or 1, len(tasks)))
    if procs > 1:
        with cf.ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
            done = sum(pool.map(_cut, tasks))
    else:
        done = sum(map(_cut, tasks))
    marker.write_text(f"{fp}\n")
    print(f"built {done} JPEG tiles of {len(tasks)} photos in {root} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return root


def _count(paths: list[Path]) -> np.ndarray:
    seen = np.zeros(1 << 24, dtype=bool)
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(np.uint32)
        seen[(a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2]] = True
    return np.packbits(seen)


def collection_colors(root: str | os.PathLike[str], procs: int | None = None) -> dict[str, int]:
    """``{images, pixels, distinct_colors}`` of the decoded tiles (cached in the folder)."""
    root = Path(root)
    cache = root / _STATS
    marker = (root / _DONE).read_text().strip() if (root / _DONE).is_file() else None
    if cache.is_file():
        stats = json.loads(cache.read_text())
        if stats.get("marker") == marker:
            return {k: v for k, v in stats.items() if k != "marker"}
    paths = sorted(root.glob("*/*.jpg"))
    procs = max(1, procs or os.cpu_count() or 1)
    parts = [paths[i::procs] for i in range(procs)]
    with cf.ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
        seen = np.bitwise_or.reduce(list(pool.map(_count, parts)))
    pixels = 0
    for p in paths:
        with Image.open(p) as im:
            pixels += im.size[0] * im.size[1]
    stats = {"images": len(paths), "pixels": pixels,
             "distinct_colors": int(np.unpackbits(seen).sum())}
    cache.write_text(json.dumps({**stats, "marker": marker}) + "\n")
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="work folder (the tiles go below)")
    ap.add_argument("--images", type=int, default=13233)
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-colors", action="store_true", help="skip counting distinct colours")
    ap.add_argument("--list", action="store_true", help="list the source photos and exit")
    args = ap.parse_args()
    if args.list:
        for p in PHOTOS:
            print(f"{p.name:28} {p.package:28} {p.ref}")
        return
    if args.out is None:
        ap.error("--out is required")
    try:
        root = build_photo_collection(args.out, args.images, args.size, args.seed)
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    per_package: dict[str, int] = {}
    for p in PHOTOS:
        per_package[p.package] = per_package.get(p.package, 0) + 1
    print(f"{root}: {args.images} tiles from {len(PHOTOS)} photos "
          f"({', '.join(f'{k} {v}' for k, v in per_package.items())})", flush=True)
    if not args.no_colors:
        t0 = time.perf_counter()
        s = collection_colors(root)
        print(f"{s['images']} images, {s['pixels']:,} pixels, {s['distinct_colors']:,} distinct "
              f"colours ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
