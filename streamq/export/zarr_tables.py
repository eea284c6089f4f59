"""The small arrays of a Zarr export, written by the client before any task starts: the image
table, each result's palettes (and centres), its per-image errors and, for the palettes of a
per-image quality fit, each image's chosen K (``k{HI}/quality``). Per-image palettes with
alpha are written as the shared one: ``(n, K, 4)`` straight RGBA (the store's colours and,
beside them, ``per_image/k{K}/alpha``), centres ``(n, K, 4)`` premultiplied RGBA.

A kill while they are written makes the rerun write them again (the export's state is then
still ``planning``).
"""

from __future__ import annotations

import numpy as np

from streamq.export.zarr_plan import QUALITY_GROUP, Result
from streamq.store import Collection, Store
from streamq.store.names import per_image_alpha, per_image_centers, per_image_palette
from streamq.store.results import load_fit, per_image_quality

__all__ = ["ROW_CHUNK", "write_tables"]

ROW_CHUNK = 4096  # rows per chunk of the per-image palette arrays (and per client write)


def write_tables(st: Store, coll: Collection, dest: Store, results: list[Result],
                 chosen: np.ndarray, offsets: np.ndarray) -> None:
    """The image table, then each result's palettes and per-image errors (client writes)."""
    dest.write_table("images", {
        "id": chosen, "path": [coll.paths[i] for i in chosen],
        "label": [coll.labels[i] for i in chosen], "height": coll.heights[chosen],
        "width": coll.widths[chosen], "offset": offsets})
    for r in results:
        if not r.group:
            fit = load_fit(st.location)
            palette = np.asarray(fit.palette, dtype=np.uint8)
            if fit.alpha is not None:  # straight RGBA
                palette = np.concatenate([palette, fit.alpha.reshape(-1, 1)], axis=1)
            dest.write_array("palette", palette)
            dest.write_array("centers", np.asarray(fit.centers, dtype=np.float64))
        else:
            k = int(r.info["k"])
            alpha = per_image_alpha(k) if r.info.get("alpha") else None
            _copy_rows(st, per_image_palette(k), dest, r.name("palette"), chosen, alpha)
            _copy_rows(st, per_image_centers(k), dest, r.name("centers"), chosen)
            if r.info.get("quality"):  # each image's own K (its palette row is padded to K)
                table = per_image_quality(st)
                assert table is not None, "plan_results marks only a complete quality fit"
                dest.write_table(r.name(QUALITY_GROUP), {c: v[chosen] for c, v in table.items()})
        if r.errors is not None:
            errors = st.read_table(r.errors, ("mse", "psnr", "ssim") if r.info.get("ssim")
                                   else ("mse", "psnr"))
            dest.write_table(r.name("images"), {k: v[chosen] for k, v in errors.items()})


def _copy_rows(st: Store, src: str, dest: Store, dst: str, rows: np.ndarray,
               alpha: str | None = None) -> None:
    """Rows ``rows`` of the store's array ``src`` as a new array ``dst``, a block at a time;
    ``alpha`` (an ``(N, K)`` array beside ``src``'s ``(N, K, 3)`` colours) as a fourth
    channel."""
    a = st.array(src)
    b = st.array(alpha) if alpha is not None else None
    inner = tuple(a.shape[1:-1]) + (a.shape[-1] + 1,) if b is not None else tuple(a.shape[1:])
    arr = dest.create_array(dst, shape=(len(rows),) + inner, dtype=a.dtype,
                            chunks=(max(1, min(len(rows), ROW_CHUNK)),) + inner, fill_value=0)
    for r0 in range(0, len(rows), ROW_CHUNK):
        part = rows[r0:r0 + ROW_CHUNK]
        block = np.asarray(a.get_orthogonal_selection((part,)))
        if b is not None:
            block = np.concatenate(
                [block, np.asarray(b.get_orthogonal_selection((part,)))[..., None]], axis=-1)
        arr[r0:r0 + len(part)] = block
