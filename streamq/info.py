"""Looking at a collection: the tutorial's exploration step, at scale.

:func:`collection_info` (:mod:`streamq.store.overview`) gathers counts from the store's tables only
(no pixel is read); :func:`format_info` renders them as text; :func:`save_grid` draws a grid of sample images
titled with their labels, like the tutorial's face grid.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from streamq.describe import describe_quality, describe_source
from streamq.fs import Location
from streamq.store import Collection, open_store
from streamq.store.overview import collection_info
from streamq.store.results import worst_images

__all__ = ["collection_info", "format_info", "save_grid", "worst_images"]


def _fixed_line(record: dict[str, Any]) -> str:
    """Fixed colours (:meth:`streamq.fixed.FixedColors.record`) in one line."""
    shown = " ".join(record["colors"][:8]) + (" ..." if record["n"] > 8 else "")
    return (f"{record['n']} colours, entries {record['positions']}: {shown} "
            f"(from {describe_source(record['source'])})")


def format_info(info: dict[str, Any], max_skipped: int = 20) -> str:
    """Human-readable report of :func:`collection_info`."""
    raw, stored = info["raw_bytes"], info["stored_bytes"]
    lines = [
        f"store        {info['store']}",
        f"source       {info['source']}",
        f"images       {info['n_images']}" + (
            f" ({info['n_images_with_alpha']} with alpha)" if info.get("n_images_with_alpha") else ""),
        f"pixels       {info['n_pixels']:,} ({info['n_pixels'] / 1e6:.2f} Mpx)",
        f"size         {stored / 2**20:.1f} MiB stored, {raw / 2**20:.1f} MiB raw"
        + (f" ({stored / raw:.0%})" if raw else ""),
        f"labels       {info['n_labels']} ({info['labels_with_one_image']} with one image)",
        "",
        "images per label:",
    ]
    width = max([len(x["label"] or "(none)") for x in info["labels_top"]] + [5])
    for x in info["labels_top"]:
        lines.append(f"  {x['label'] or '(none)':<{width}}  {x['count']}")
    tail = info["labels_tail"]
    if tail["n_labels"]:
        lines.append(f"  ... {tail['n_labels']} more labels with {tail['n_images']} images")
    lines += ["", f"image shapes (HxW, {info['n_shapes']} distinct):"]
    for x in info["shapes_top"]:
        lines.append(f"  {x['shape']:>11}  {x['count']}")
    fit = info.get("fit")
    if fit:
        lines += [""]
        if fit.get("error"):
            lines.append(f"palette      none: {fit['error']}")
        elif fit["state"] != "complete":
            lines.append(f"palette      {fit['state']} (rerun `streamq fit` to finish it)")
        elif fit.get("palette_source"):
            lines.append(f"palette      K={fit['k']} given ({fit['color_space']}), "
                         f"PSNR {fit['psnr']:.2f} dB")
            lines.append(f"from         {describe_source(fit['palette_source'])}")
        else:
            lines.append(f"palette      K={fit['k']} ({fit['algorithm']}, {fit['color_space']}), "
                         f"{fit['steps']} steps, {fit['pixels_seen'] / 1e6:.1f} Mpx seen, "
                         f"PSNR {fit['psnr']:.2f} dB")
            lines.append(f"stopped      {fit['stop_reason']}")
            if fit.get("quality"):
                lines.append(f"target       {describe_quality(fit['quality'])}")
            if fit.get("fixed_colors"):
                lines.append(f"fixed        {_fixed_line(fit['fixed_colors'])}")
        if fit["state"] == "complete":
            order = np.argsort(fit["counts"])[::-1][:16]
            hexes = fit.get("palette_rgba_hex") or fit["palette_hex"]  # #rrggbbaa with alpha
            lines.append("colours      " + " ".join(hexes[i] for i in order)
                         + (" ..." if fit["k"] > 16 else ""))
    q = info.get("labels")
    if q:
        if q["state"] == "complete":
            lines.append(f"labels       K={q['k']}, collection MSE {q['mse']:.2f}, PSNR {q['psnr']:.2f} dB")
            lines.append("worst PSNR   " + ", ".join(f"{w['path']} {w['psnr']:.1f} dB" for w in q["worst"][:3]))
            if q.get("ssim_mean") is not None:
                n_none = info["n_images"] - q["ssim_images"]
                lines.append(f"SSIM         mean {q['ssim_mean']:.4f}, min {q['ssim_min']:.4f} "
                             "(luma, 11x11 Gaussian window)"
                             + (f"; {n_none} images under 11x11 have none" if n_none else ""))
                lines.append("worst SSIM   " + ", ".join(f"{w['path']} {w['ssim']:.4f}"
                                                         for w in q["worst_ssim"][:3]))
        elif q["state"] == "stale":
            lines.append("labels       stale: the palette was refitted; run `streamq quantize`")
        else:
            lines.append(f"labels       {q['state']} (rerun `streamq quantize` to finish)")
    p = info.get("per_image")
    if p:
        lines.append(f"per-image    K={','.join(map(str, p['colors'] or []))} on {p['sample']} of each "
                     f"image's pixels, method {p['method']} ({p['state']})")
        if p.get("fixed_colors"):
            lines.append(f"  fixed      {_fixed_line(p['fixed_colors'])}")
        if p.get("quality"):
            q = p["quality"]
            lo, hi = q["k_range"]
            lines.append(f"  quality    {q['min']:g}-{q['max']:g} dB, K in {lo}..{hi} for each "
                         f"image (palettes padded to K={hi}): mean K {q['mean_k']:.1f}, "
                         f"{q['met']} of {info['n_images']} reached {q['max']:g} dB, "
                         f"{q['below_min']} below MIN")
            for b in q["below"][:max_skipped]:
                lines.append(f"  below MIN  {b['path']}: {b['reason']}")
            if len(q["below"]) > max_skipped:
                lines.append(f"  ... {len(q['below']) - max_skipped} more below MIN (see --json)")
        for k, r in p["results"].items():
            psnr = f"mean PSNR {r['mean_psnr']:.2f} dB" if r["mean_psnr"] is not None else ""
            lines.append(f"  K={k:<4} labels {r['labels']}  {psnr}")
    g = info.get("groups")
    if g:
        if g["state"] == "complete":
            lines.append(f"groups       {g['groups']} ({g['descriptor']}, K={g['k']}), images per group: "
                         + " ".join(map(str, g["sizes"])))
            if g["ari"] is not None:
                lines.append(f"  vs labels  ARI {g['ari']:.3f}, NMI {g['nmi']:.3f} "
                             f"({g['n_labels']} labels)")
        elif g["state"] == "stale":
            lines.append("groups       stale: the palette was refitted; run `streamq quantize` "
                         "and `streamq cluster-images`")
        else:
            lines.append(f"groups       {g['state']} (rerun `streamq cluster-images` to finish)")
    lines += ["", f"skipped inputs: {info['n_skipped']}"]
    for s in info["skipped"][:max_skipped]:
        lines.append(f"  {s['path']}: {s['reason']}")
    if info["n_skipped"] > max_skipped:
        lines.append(f"  ... {info['n_skipped'] - max_skipped} more (see --json)")
    return "\n".join(lines)


def save_grid(store: str | os.PathLike[str] | Location | Collection, out: str | os.PathLike[str],
              rows: int = 2, cols: int = 5, seed: int = 0, ids: list[int] | None = None,
              storage_options: dict[str, Any] | None = None) -> list[int]:
    """Save a ``rows x cols`` grid of images titled with their labels (a local file); return
    the ids shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coll = store if isinstance(store, Collection) else open_store(store, storage_options)
    n = min(rows * cols, len(coll))
    if ids is None:
        rng = np.random.default_rng(seed)
        ids = sorted(int(i) for i in rng.choice(len(coll), size=n, replace=False))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, ids, strict=False):
        ax.imshow(coll.read(i))
        # Labels are folder names: '$' in them is text, not matplotlib mathtext.
        ax.set_title(coll.labels[i].replace("_", " ") or f"#{i}", fontsize=9, parse_math=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(os.fspath(out), dpi=100)
    plt.close(fig)
    return list(ids)
