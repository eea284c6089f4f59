"""Image quality numbers shared by the stages: PSNR, and per-image errors from task records."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import numpy as np

__all__ = ["errors_from_records", "psnr"]


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of an MSE in uint8 units (inf when exact)."""
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def errors_from_records(records: Iterable[str], sizes: np.ndarray,
                        channels: int | np.ndarray = 3) -> dict[str, np.ndarray]:
    """Sum the ``[image_id, squared_error]`` pairs of completion records into per-image
    ``sse``, ``mse`` and ``psnr`` arrays (``sizes``: pixels per image; ``channels`` per
    pixel: 3, or 4 for errors over premultiplied RGBA; or one per image)."""
    sse = np.zeros(len(sizes), dtype=np.int64)
    for r in records:
        for image_id, value in json.loads(r)["sse"]:
            sse[image_id] += value
    n = channels * np.asarray(sizes, dtype=np.int64)
    mse = sse / np.maximum(n, 1)
    return {"sse": sse, "mse": mse, "psnr": np.asarray([psnr(m) for m in mse])}
