"""What a Zarr export holds: one result per labelling of the store, and the labels' layout.

A result (:class:`Result`) is the shared palette's labels, or those of one per-image K: its
group in the export, the store's labels it copies, its per-image errors when quantize wrote
them, and what the export's attributes say about it (:func:`plan_results`). The exported
labels lie back to back in shards of the store's size or ``export.zarr_chunk_pixels``
(:func:`labels_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamq.errors import ConfigError
from streamq.store import Store, open_array
from streamq.store.names import image_errors_path, labels_path, per_image_alpha
from streamq.store.results import labels_identity, load_fit, ready_labels

__all__ = ["ATTR", "FORMAT_VERSION", "QUALITY_GROUP", "Result", "id_ranges", "labels_layout", "per_image_ks",
           "plan_results"]

ATTR = "streamq_export"  # the export's attribute in its zarr.json
FORMAT_VERSION = 1
QUALITY_GROUP = "quality"  # k{HI}/quality/{k,mse,psnr,met,reason}: a quality fit's choice per image


@dataclass(frozen=True)
class Result:
    """One labelling of the store to export: the shared palette's, or per-image K's."""

    group: str  # "" (shared palette, at the root) or "k{K}"
    labels: str  # the store's labels array
    errors: str | None  # prefix of the store's images/{mse,psnr[,ssim]}, when written
    info: dict[str, Any]  # what the export's attributes say about it
    identity: str  # the labels it was planned from (streamq.store.results.labels_identity)

    @property
    def k(self) -> int | None:
        """The per-image K (None: the shared palette)."""
        return int(self.info["k"]) if self.group else None

    def name(self, array: str) -> str:
        return f"{self.group}/{array}" if self.group else array


def per_image_ks(per_image: int | Sequence[int] | None) -> list[int] | None:
    """The per-image K to export, sorted, each once (None: the shared palette's labels)."""
    if per_image is None:
        return None
    ks = [per_image] if isinstance(per_image, int) else [int(k) for k in per_image]
    if not ks:
        raise ConfigError("--per-image names no K")
    return sorted(set(ks))


def plan_results(st: Store, ks: list[int] | None) -> list[Result]:
    """What to export: the shared palette's labels, or those of each per-image K."""
    plan: list[tuple[str, int | None, dict[str, Any]]]
    if ks is None:
        fp = ready_labels(st, None)
        fit = load_fit(st.location)
        plan = [("", None, {"palette": "shared", "k": fit.k, "color_space": fit.color_space,
                                  "algorithm": fit.algorithm, "seed": fit.seed,
                                  "fit_fingerprint": fp,
                                  "palette_source": fit.palette_source})]
        if fit.alpha is not None:  # only then: an opaque collection's export is unchanged
            plan[0][2]["alpha"] = True
    else:
        sec = st.section("per_image")
        pcfg = sec.get("config", {})
        plan = [(f"k{k}", k, {
            "palette": "per-image", "k": k, "color_space": "rgb", "sample": pcfg.get("sample"),
            "seed": pcfg.get("seed"), "fit_fingerprint": ready_labels(st, k)}) for k in ks]
        for _, k, info in plan:  # palettes with alpha: (n, K, 4) straight RGBA, as the shared
            if k is not None and st.has(per_image_alpha(k)):  # only then: opaque unchanged
                info["alpha"] = True
        if sec.get("quality"):  # one K group (HI); each image's own K in k{HI}/quality/k
            q = sec["quality"]
            for group, _, info in plan:
                info["quality"] = {"min": q["min"], "max": q["max"],
                                   "k_range": list(q["k_range"]),
                                   "own_k": f"{group}/{QUALITY_GROUP}/k"}
    results = []
    for group, k_of, info in plan:
        labels = labels_path(k_of)
        errors = image_errors_path(k_of)
        has_errors = st.has(f"{errors}/mse") and st.has(f"{errors}/psnr")
        has_ssim = has_errors and st.has(f"{errors}/ssim")  # quantize.ssim (streamq.ssim)
        pre = f"{group}/" if group else ""
        pal = f"{pre}palette[j]" if group else "palette"
        if info.get("quality"):  # the image's own entries: labels never reach past them
            pal = f"{pre}palette[j][:{info['quality']['own_k']}[j]]"
        bands = 4 if info.get("alpha") else 3
        info = {"group": group, **info, "labels_dtype": str(open_array(st.location, labels).dtype),
                "errors": has_errors, "ssim": has_ssim,
                "read": f"image j = {pal}[{pre}labels[offset[j]:offset[j] + height[j] * width[j]]]"
                        f".reshape(height[j], width[j], {bands})"}
        k = int(info["k"]) if group else None
        results.append(Result(group, labels, errors if has_errors else None, info,
                               labels_identity(st, k)))
    return results


def labels_layout(st: Store, n_pixels: int, chunk_pixels: int | None) -> tuple[int, int]:
    """``(shard, block)`` of the exported labels: the store's, or shards of ``chunk_pixels``."""
    store_shard, store_block = st.pixel_layout()
    shard = chunk_pixels or store_shard
    block = max(1, min(store_block, shard, n_pixels))
    return -(-max(1, min(shard, n_pixels)) // block) * block, block


def id_ranges(ids: list[int]) -> str:
    """``0,2-5,9`` for ids 0, 2, 3, 4, 5, 9 (sorted)."""
    parts, start = [], None
    for j, i in enumerate(ids):
        if start is None:
            start = i
        if j + 1 == len(ids) or ids[j + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)
