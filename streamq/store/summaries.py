"""The per-image palettes' results as one summary: what ``fit --per-image`` and the per-image
labelling of ``quantize`` return, and what ``streamq quantize`` prints of them.

Part of the store layer: the per-image fit (:mod:`streamq.per_image`) and the per-image
labelling (:mod:`streamq.quantize.per_image`) describe the same results without importing
each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from streamq.fs import Location
from streamq.store.images import Collection
from streamq.store.layout import Store
from streamq.store.names import PER_IMAGE, per_image_labels
from streamq.store.results import labels_state, per_image_quality

__all__ = ["PerImageSummary", "per_image_summary", "summary_of"]


@dataclass
class PerImageSummary:
    store: str
    colors: list[int]
    n_images: int
    status: str
    mean_psnr: dict[int, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: a quality fit (``fit --per-image --quality``): target, range, mean K, how many images
    #: reached MAX and how many stayed below MIN, and ``images``: each image's ``id``,
    #: ``path``, ``k``, ``psnr``, ``met`` and ``reason``; None for a list of K
    quality: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["quality"] is None:  # a list of K: as before there were quality targets
            del out["quality"]
        return out

    def __str__(self) -> str:
        q = self.quality
        if q is None:
            text = f"{self.status}: per-image palettes K={','.join(map(str, self.colors))} for {self.n_images} images"
        else:
            lo, hi = q["k_range"]
            text = (f"{self.status}: per-image palettes for {self.n_images} images, quality "
                    f"{q['min']:g}-{q['max']:g} dB, K in {lo}..{hi}: mean K {q['mean_k']:.1f}, "
                    f"{q['met']} of {self.n_images} reached {q['max']:g} dB"
                    + (f", {q['below_min']} below MIN" if q["below_min"] else ""))
        if self.mean_psnr and q is not None:  # one result, each image at its own K
            text += f"; mean PSNR of the labels {next(iter(self.mean_psnr.values())):.2f} dB"
        elif self.mean_psnr:
            text += "; mean PSNR " + ", ".join(f"K={k}: {v:.2f} dB" for k, v in self.mean_psnr.items())
        return text


def summary_of(store: str | Location,
               storage_options: dict[str, Any] | None = None) -> PerImageSummary | None:
    """The per-image results in ``store``, or None when there are none."""
    st = Store.open(store, storage_options=storage_options)
    if st.section(PER_IMAGE).get("state") != "complete":
        return None
    return per_image_summary(st, "per-image")


def per_image_summary(st: Store, status: str, timings: dict[str, float] | None = None,
                      n_images: int | None = None) -> PerImageSummary:
    """The summary of ``st``'s per-image palettes: the mean PSNR of every K whose labels are
    current, with ``status`` and ``timings`` of the stage that returns it."""
    sec = st.section(PER_IMAGE)
    table = per_image_quality(st)
    paths = Collection(st).paths if n_images is None or table is not None else []
    n_images = len(paths) if n_images is None else n_images
    mean = {}
    for k in sec.get("colors", []):
        if labels_state(st, k)[0] == "complete":
            mean[k] = st.section(per_image_labels(k))["mean_psnr"]
    quality = None
    if table is not None:
        quality = {**sec["quality"], "images": [
            {"id": i, "path": paths[i], "k": int(table["k"][i]), "psnr": float(table["psnr"][i]),
             "met": bool(table["met"][i]), "reason": str(table["reason"][i])}
            for i in range(len(table["k"]))]}
    return PerImageSummary(store=st.path, colors=list(sec.get("colors", [])), n_images=n_images,
                           status=status, mean_psnr=mean, timings=timings or {}, quality=quality)
