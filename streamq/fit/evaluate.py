"""How good a palette is over a whole collection: :func:`collection_mse`, exact, from the
store's colour histogram (:mod:`streamq.histogram`), or from its RGBA histogram for a
collection with alpha (:mod:`streamq.fit.alpha`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamq.colorspace import to_rgb8
from streamq.fit.lloyd import exact_mse, points
from streamq.fs import Location, check_access, location
from streamq.histogram import histogram
from streamq.lock import store_lock
from streamq.results import load_fit
from streamq.scheduler import runner
from streamq.store import Collection, Store

__all__ = ["collection_mse"]


def collection_mse(store: str | Location, centers: np.ndarray | None = None,
                   color_space: str | None = None, scheduler: str | None = "threads",
                   storage_options: dict[str, Any] | None = None) -> float:
    """Exact MSE (uint8 RGB units) of a palette over every pixel of the collection (for a
    collection with alpha: ``(K, 4)`` premultiplied RGBA centres, MSE over premultiplied RGBA).

    Each pixel goes to its nearest centre in the fit's colour space and is compared with that
    centre's RGB colour, as quantize does. Uses the store's colour histogram (computed once
    for a store ingested without one). Defaults to the store's fitted palette.
    """
    from streamq.config import DaskConfig

    loc = location(store, storage_options)
    check_access(loc)
    with store_lock(loc, operation="collection_mse"):  # may store the colour histogram
        st = Store.open(loc, mode="r+")
        if centers is None:
            res = load_fit(st.location)
            centers, color_space = res.centers, res.color_space
        space = color_space or "rgb"
        coll = Collection(st)
        with runner(DaskConfig(scheduler=scheduler)) as run:
            run.check_paths(st.path)
            if coll.n_alpha:  # premultiplied RGBA centres, errors over the four channels
                from streamq.fit.alpha import rgba_mse

                return rgba_mse(run, st, coll, np.asarray(centers, dtype=np.float64))
            codes, counts = histogram(run, st)
    centers = np.asarray(centers, dtype=np.float64)
    return exact_mse(points(codes, space), codes, counts, centers, to_rgb8(centers, space))[0]

