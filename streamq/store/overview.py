"""What a collection holds and how far each stage got: counts and states, JSON-ready.

:func:`collection_info` reads the store's tables and attributes only (no pixel is read); it
is the data of ``streamq info`` (:mod:`streamq.info` renders it as text) and of the report's
overview, so both show every result's state by the one rule of :mod:`streamq.store.results`.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from streamq.fs import Location
from streamq.store.image_groups import groups_summary
from streamq.store.images import Collection, open_store
from streamq.store.names import FIT_PALETTE, PIXELS, image_errors_path, per_image_labels
from streamq.store.results import labels_state, per_image_quality, worst_images

__all__ = ["collection_info"]


def collection_info(store: str | os.PathLike[str] | Location | Collection, top: int = 10,
                    storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts and shapes of a collection, JSON-ready (``storage_options`` for URLs)."""
    coll = store if isinstance(store, Collection) else open_store(store, storage_options)
    labels = Counter(coll.labels)
    shapes = Counter(f"{h}x{w}" for h, w in coll.shapes)
    stored = coll.store.stored_bytes(PIXELS)
    ingest = coll.store.section("ingest")
    ranked = labels.most_common()
    alpha = {"n_images_with_alpha": coll.n_alpha} if coll.n_alpha else {}  # only then: as before
    return {
        "store": coll.path,
        "source": ingest.get("root") or ingest.get("source"),
        "n_images": len(coll),
        **alpha,
        "n_pixels": coll.n_pixels,
        "raw_bytes": coll.n_pixels * 3,
        "stored_bytes": stored,
        "n_labels": len(labels),
        "labels_top": [{"label": k, "count": v} for k, v in ranked[:top]],
        "labels_tail": {"n_labels": max(0, len(ranked) - top),
                        "n_images": sum(v for _, v in ranked[top:])},
        "labels_with_one_image": sum(1 for v in labels.values() if v == 1),
        "shapes_top": [{"shape": k, "count": v} for k, v in shapes.most_common(top)],
        "n_shapes": len(shapes),
        "n_skipped": len(coll.skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in coll.skipped],
        "settings": ingest.get("settings", {}),
        "fit": _fit_summary(coll),
        "labels": _labels_summary(coll),
        "per_image": _per_image_summary(coll),
        "groups": _groups_summary(coll),
    }


def _groups_summary(coll: Collection) -> dict[str, Any] | None:
    return groups_summary(coll.store)


def _per_image_summary(coll: Collection) -> dict[str, Any] | None:
    sec = coll.store.section("per_image")
    if not sec:
        return None
    out: dict[str, Any] = {"state": sec.get("state"), "colors": sec.get("colors"),
                           "sample": sec.get("config", {}).get("sample"),
                           "method": sec.get("config", {}).get("method", "kmeans"), "results": {}}
    if sec.get("fixed_colors"):
        out["fixed_colors"] = sec["fixed_colors"]
    table = per_image_quality(coll.store)
    if table is not None:  # a quality fit: each image's K; those below MIN, and why
        out["quality"] = {**sec["quality"], "below": [
            {"id": i, "path": coll.paths[i], "k": int(table["k"][i]),
             "psnr": float(table["psnr"][i]), "reason": str(table["reason"][i])}
            for i in range(len(table["k"])) if table["reason"][i]]}
    for k in sec.get("colors") or []:
        q = coll.store.section(per_image_labels(k))
        out["results"][str(k)] = {"labels": labels_state(coll.store, k)[0],
                                  "mean_psnr": q.get("mean_psnr")}
    return out


def _labels_summary(coll: Collection) -> dict[str, Any] | None:
    q = coll.store.section("quantize")
    if not q:
        return None
    out = {k: q.get(k) for k in ("state", "k", "mse", "psnr")}
    out["state"] = labels_state(coll.store)[0]
    if out["state"] == "complete":
        t = coll.store.read_table(image_errors_path(), ("psnr",))
        out["worst"] = [{"id": i, "path": coll.paths[i], "psnr": float(t["psnr"][i])}
                        for i in worst_images(t["psnr"], 5)]
        if q.get("ssim"):  # per-image SSIM (streamq.ssim); NaN: smaller than its window
            v = coll.store.read_table(image_errors_path(), ("ssim",))["ssim"].astype(np.float64)
            out.update({k: q.get(k) for k in ("ssim_mean", "ssim_min", "ssim_images")})
            out["worst_ssim"] = [{"id": i, "path": coll.paths[i], "ssim": float(v[i])}
                                 for i in worst_images(v, 5) if np.isfinite(v[i])]
    return out


def _fit_summary(coll: Collection) -> dict[str, Any] | None:
    fit = coll.store.section("fit")
    if not fit:
        return None
    out = {"state": fit.get("state"), **fit.get("summary", {}),
           "palette_source": fit.get("palette_source")}  # None: a k-means fit
    if fit.get("error"):  # a quality search that failed below its MIN (streamq.fit.quality)
        out.update(error=fit["error"], quality=fit.get("quality"))
    if fit.get("fixed_colors"):
        out["fixed_colors"] = fit["fixed_colors"]
    if fit.get("state") == "complete":
        p = coll.store.read_table(FIT_PALETTE, ("r", "g", "b", "count"))
        out["palette_hex"] = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in zip(p["r"], p["g"], p["b"], strict=True)]
        out["counts"] = [int(c) for c in p["count"]]
        if coll.store.has(f"{FIT_PALETTE}/a"):  # a palette with alpha: #rrggbbaa beside it
            alpha = np.asarray(coll.store.array(f"{FIT_PALETTE}/a")[:]).tolist()
            out["palette_rgba_hex"] = [f"{h}{a:02x}" for h, a in
                                       zip(out["palette_hex"], alpha, strict=True)]
    return out
