"""Make the figures of docs/tutorial.md from the stores the tutorial builds.

Run the tutorial's commands first (they make ``photo.zarr`` and ``faces.zarr``), then::

    python docs/make_tutorial_figures.py photo.zarr faces.zarr docs/img

It writes small PNG files (a few hundred KB in all):

- ``photo-k2-6-30.png``: the photo and its per-image quantizations for K = 2, 6 and 30,
  titled with the number of clusters (the original tutorial's figure);
- ``faces-grid.png``: the exploration grid, a 2x5 sample of the collection titled with the
  labels (the grid of ``streamq info --grid``);
- ``faces-before-after.png``: a few faces, then their per-image K = 2, 6, 30 versions and the
  shared-palette version;
- ``palette.png``: the shared palette, most used colour first;
- ``groups.png``: each image group with its centre's palette histogram and the members
  nearest to that centre (what the report's "Image groups" section shows).

Everything is read through streamq's API and the documented store layout
(docs/store-format.md); nothing is written to the stores.
"""

from __future__ import annotations

import argparse
import io
import os

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import zarr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

import streamq  # noqa: E402
from streamq.info import save_grid  # noqa: E402
from streamq.per_image import load_per_image  # noqa: E402

KS = (2, 6, 30)


def save(fig: Figure, path: str, dpi: int = 100) -> None:
    """Save a figure as an optimised PNG (drawn on the Agg canvas, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    with Image.open(buf) as im:
        im.convert("RGB").save(path, optimize=True)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")


def shrink(rgb: np.ndarray, side: int) -> np.ndarray:
    """Every n-th row and column, so that the longest side is at most ``side``."""
    step = max(1, -(-max(rgb.shape[:2]) // side))
    return rgb[::step, ::step]


def per_image_version(store: str, coll: streamq.Collection, i: int, k: int) -> np.ndarray:
    """Image ``i`` rebuilt from its own K-colour palette and its labels."""
    _, palettes = load_per_image(store, k)
    off, (h, w) = int(coll.offsets[i]), coll.shapes[i]
    labels = zarr.open_group(store, mode="r")[f"per_image/k{k}/labels"][off:off + h * w]
    return palettes[i][labels.astype(np.int64)].reshape(h, w, 3)


def shared_version(store: str, coll: streamq.Collection, i: int) -> np.ndarray:
    """Image ``i`` rebuilt from the shared palette and its labels."""
    palette = streamq.load_fit(store).palette
    off, (h, w) = int(coll.offsets[i]), coll.shapes[i]
    labels = zarr.open_group(store, mode="r")["quantize/labels"][off:off + h * w]
    return palette[labels.astype(np.int64)].reshape(h, w, 3)


def psnr_of(store: str, prefix: str, i: int) -> float:
    return float(zarr.open_group(store, mode="r")[f"{prefix}/images/psnr"][i])


def photo_figure(store: str, out: str) -> None:
    coll = streamq.open_store(store)
    side = 240
    panels = [("Original", shrink(coll.read(0), side))]
    for k in KS:
        panels.append((f"{k} clusters\n(PSNR {psnr_of(store, f'per_image/k{k}', 0):.1f} dB)",
                       shrink(per_image_version(store, coll, 0, k), side)))
    h, w = panels[0][1].shape[:2]
    fig = Figure(figsize=(len(panels) * w / 100 + 0.4, h / 100 + 0.55))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=h / (h + 55), wspace=0.04)
    for n, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    save(fig, out)


def grid_figure(store: str, out: str) -> None:
    save_grid(store, out, rows=2, cols=5, seed=0)  # exactly `streamq info --grid`
    with Image.open(out) as im:
        small = im.convert("RGB").resize((im.width * 7 // 10, im.height * 7 // 10),
                                         Image.Resampling.LANCZOS)
    small.save(out, optimize=True)
    print(f"wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB)")


def before_after_figure(store: str, out: str, ids: list[int]) -> None:
    coll = streamq.open_store(store)
    k_shared = streamq.load_fit(store).k
    side = 125
    cols = ["original", *(f"{k} clusters, own palette" for k in KS), f"shared {k_shared} colours"]
    fig = Figure(figsize=(len(cols) * 1.3, len(ids) * 1.3 + 0.35))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / (len(ids) * 1.3 + 0.35),
                        wspace=0.04, hspace=0.04)
    for r, i in enumerate(ids):
        images = [coll.read(i), *(per_image_version(store, coll, i, k) for k in KS),
                  shared_version(store, coll, i)]
        for c, img in enumerate(images):
            ax = fig.add_subplot(len(ids), len(cols), r * len(cols) + c + 1)
            ax.imshow(shrink(img, side), interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(cols[c].replace(", ", "\n"), fontsize=7)
    save(fig, out)


def palette_figure(store: str, out: str) -> None:
    fit = streamq.load_fit(store)
    order = np.argsort(-fit.counts, kind="stable")
    share = fit.counts[order] / fit.counts.sum()
    fig = Figure(figsize=(8, 1.3), layout="constrained")
    ax = fig.add_subplot()
    for x, (j, s) in enumerate(zip(order, share, strict=True)):
        rgb = fit.palette[j] / 255
        ax.bar(x, 1, color=rgb, width=0.95)
        ink = "black" if rgb @ [0.299, 0.587, 0.114] > 0.55 else "white"
        ax.text(x, 0.5, f"#{''.join(f'{v:02x}' for v in fit.palette[j])}\n{s:.0%}",
                ha="center", va="center", fontsize=6, color=ink, family="monospace")
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_axis_off()
    ax.set_title(f"Shared palette: {fit.k} colours by share of the pixels", fontsize=9)
    save(fig, out)


def groups_figure(store: str, out: str, per_group: int = 6) -> None:
    coll = streamq.open_store(store)
    groups = streamq.load_groups(store)
    palette = streamq.load_fit(store).palette
    side = 64
    rows = groups.groups
    height = rows * 0.8 + 0.35
    fig = Figure(figsize=(1.6 + per_group * 0.75, height))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / height,
                        wspace=0.05, hspace=0.08)
    gs = fig.add_gridspec(rows, per_group + 1, width_ratios=[2.1] + [1] * per_group)
    for g in range(rows):
        ax = fig.add_subplot(gs[g, 0])
        shares = np.clip(groups.centers[g, :groups.k], 0, None)
        shares = shares / shares.sum()
        left = 0.0
        for j in np.argsort(-shares, kind="stable"):
            ax.barh(0, shares[j], left=left, color=palette[j] / 255, height=0.6)
            left += shares[j]
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.5, 1.6)
        ax.text(0, 1.0, f"group {g}: {groups.sizes[g]} images", fontsize=7, va="bottom")
        ax.set_axis_off()
        for c, i in enumerate(groups.members(g)[:per_group]):
            ax = fig.add_subplot(gs[g, c + 1])
            ax.imshow(shrink(coll.read(int(i)), side), interpolation="nearest")
            ax.set_axis_off()
    if groups.ari is not None:
        fig.suptitle(f"{groups.groups} image groups (ARI {groups.ari:.2f}, NMI {groups.nmi:.2f} "
                     "against the labels)",
                     fontsize=8, y=1 - 0.08 / height)
    save(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", help="the one-photo store of the tutorial (photo.zarr)")
    parser.add_argument("faces", help="the collection store of the tutorial (faces.zarr)")
    parser.add_argument("out", help="folder for the PNG files (docs/img)")
    parser.add_argument("--ids", default="0,120,200", help="faces shown before and after")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    photo_figure(args.photo, os.path.join(args.out, "photo-k2-6-30.png"))
    grid_figure(args.faces, os.path.join(args.out, "faces-grid.png"))
    before_after_figure(args.faces, os.path.join(args.out, "faces-before-after.png"),
                        [int(i) for i in args.ids.split(",")])
    palette_figure(args.faces, os.path.join(args.out, "palette.png"))
    groups_figure(args.faces, os.path.join(args.out, "groups.png"))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"{args.out}: {total / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
