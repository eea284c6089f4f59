"""``ColorQuantizer``: streamq's palette fit as a scikit-learn estimator.

One module of over 400 lines on purpose: it holds one thing, the estimator class (with the
few helpers only it uses), whose length is scikit-learn's convention of a full parameter and
attribute docstring and one ``fit``/``predict``/``transform`` path per kind of ``X`` below;
the work itself is :mod:`streamq.kmeans` and :func:`streamq.fit`.

``fit`` learns ``n_colors`` centres from pixels; ``predict`` gives each pixel the index of its
nearest centre (exact, first centre on ties); ``transform`` gives each pixel its palette
colour. ``X`` may be

* an ``(n, 3)`` array of pixels, an ``(H, W, 3)`` image or an ``(N, H, W, 3)`` stack, uint8 or
  uint16 (scaled to 8 bits as ingest scales 16-bit files): colours. The fit is exact K-Means
  over every pixel, computed on the colour histogram (each distinct colour weighted by its
  count) by the k-means core (:mod:`streamq.kmeans`) as ``streamq fit --algorithm lloyd``
  runs it on a store: ``n_init`` k-means++ starts raced on a 64-level colour grid, the best 2
  finished by exact Lloyd on every colour, then any duplicate palette colour replaced. The
  same pixels give the same palette as that command does on a store holding them.
* a Dask array of such pixels: its colour histogram is counted block by block by Dask (the
  pixels are never gathered), then fitted as above; ``predict`` and ``transform`` return lazy
  Dask arrays.
* a store (a path or URL, or an opened :class:`~streamq.store.Collection`): ``fit`` is
  :func:`streamq.fit` on it, with its Dask runner, resumable, and the palette saved in the
  store (the result is ``streamq fit STORE`` with the same settings); ``predict`` and
  ``transform`` return a list of lazy per-image Dask arrays computed from the store's pixels
  (nothing is written; :func:`streamq.quantize` stores labels).
* any other numbers (float, signed integers), ``(n_samples, n_features)`` as scikit-learn
  takes them: generic weighted K-Means on the distinct rows by the same core (this is what
  scikit-learn's estimator checks exercise). Centres are then in the units of ``X``.
"""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from streamq.colorspace import SPACES, to_rgb8, to_space
from streamq.fs import Location

if TYPE_CHECKING:
    from streamq.fit import FitResult

__all__ = ["ColorQuantizer"]

_ALGORITHMS = ("auto", "lloyd", "minibatch")
_COLOUR_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _is_store(X: Any) -> bool:
    from streamq.store import Collection

    return isinstance(X, str | os.PathLike | Location | Collection)


def _is_dask(X: Any) -> bool:
    from dask.base import is_dask_collection

    return bool(is_dask_collection(X)) and hasattr(X, "dtype")


def _to_rgb8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:
        from streamq.decode import scale16

        return scale16(a)
    return np.asarray(a, dtype=np.uint8)


def _colour_labels(rgb: np.ndarray, centers: np.ndarray, space: str) -> np.ndarray:
    """Nearest centre (in ``space``) of each uint8/uint16 pixel of ``rgb`` (``(..., 3)``),
    computed once per distinct colour: int32 labels of shape ``rgb.shape[:-1]``."""
    from streamq.kmeans.codes import codes_to_rgb, rgb_to_codes
    from streamq.kmeans.nearest import assign

    flat = _to_rgb8(np.asarray(rgb)).reshape(-1, 3)
    if not len(flat):
        return np.zeros(rgb.shape[:-1], np.int32)
    codes, inverse = np.unique(rgb_to_codes(flat), return_inverse=True)
    lab, _ = assign(to_space(codes_to_rgb(codes), space), centers)
    return lab.astype(np.int32)[inverse.reshape(-1)].reshape(rgb.shape[:-1])


def _lookup(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[labels]


def _block_colours(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from streamq.kmeans.codes import distinct_colours

    return distinct_colours(_to_rgb8(np.asarray(block)).reshape(-1, 3))


class ColorQuantizer(OneToOneFeatureMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """Colour quantization by K-Means: a palette of ``n_colors`` colours for images, pixel
    arrays, Dask arrays or streamq stores (see the module docstring for each).

    Parameters
    ----------
    n_colors : int, default=16
        Palette size K.
    algorithm : {"auto", "lloyd", "minibatch"}, default="auto"
        ``lloyd``: exact K-Means over every pixel. ``minibatch`` (stores only): streamed
        mini-batch steps, then exact Lloyd (the default of ``streamq fit``). ``auto``:
        ``minibatch`` for stores, ``lloyd`` otherwise.
    color_space : {"rgb", "oklab"}, default="rgb"
        Where distances between colours are measured; centres are in this space (``rgb``:
        ``value / 255``), the palette is always sRGB uint8. Colour input only.
    init : {"k-means++", "random"} or array of shape (n_colors, n_features), default="k-means++"
        Starting centres: greedy weighted k-means++ or random distinct points (``n_init``
        starts each), or the given centres (one start, in ``color_space`` units for colours).
    n_init : int, default=16
        Random starts; the lowest inertia wins.
    max_iter : int, default=1000
        Lloyd iterations per start at most.
    tol : float, default=0.0
        Stop when the squared centre shifts of an iteration sum to at most ``tol`` times the
        data's mean variance (scikit-learn's rule); 0 runs until no label changes.
    random_state : int, RandomState or None, default=0
        Seed of the starts (an int is the ``--seed`` of ``streamq fit``).
    scheduler : str, optional
        Stores only: where :func:`streamq.fit` runs (``"threads"``, ``"sync"``, a scheduler
        address; default a local Dask cluster).
    overwrite : bool, default=False
        Stores only: replace a palette of other settings already in the store (else refused).
    progress : bool, optional
        Stores only: show progress bars (default: when stderr is a terminal).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_colors, n_features)
        Centres, in ``color_space`` for colours, in the units of ``X`` otherwise.
    palette_ : ndarray of shape (n_colors, 3) or None
        The centres as sRGB uint8 colours (None for non-colour input).
    labels_ : ndarray, Dask array or list of Dask arrays
        Labels of the training pixels, shaped as ``predict`` returns them.
    inertia_ : float
        Sum of squared distances of every pixel (sample) to its nearest centre.
    n_iter_ : int
        Lloyd iterations (mini-batch steps included for a store's ``minibatch`` fit).
    n_features_in_ : int
        3 for colours.
    color_input_ : bool
        Whether the model was fitted on colours (uint8/uint16 pixels or a store).
    fit_result_ : FitResult or None
        The store's fit (palette, history, MSE/PSNR...) when fitted on a store.
    """

    # The fitted attributes' types (declared only: ``fit`` sets them on the instance, which is
    # what scikit-learn's ``check_is_fitted`` looks for).
    cluster_centers_: np.ndarray
    palette_: np.ndarray | None
    labels_: Any
    inertia_: float
    n_iter_: int
    n_features_in_: int
    color_input_: bool
    fit_result_: FitResult | None

    def __init__(self, n_colors: int = 16, *, algorithm: str = "auto", color_space: str = "rgb",
                 init: Any = "k-means++", n_init: int = 16, max_iter: int = 1000,
                 tol: float = 0.0, random_state: Any = 0, scheduler: str | None = None,
                 overwrite: bool = False, progress: bool | None = None) -> None:
        self.n_colors = n_colors
        self.algorithm = algorithm
        self.color_space = color_space
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.scheduler = scheduler
        self.overwrite = overwrite
        self.progress = progress

    # -- checks ------------------------------------------------------------------------------
    def _check_params(self, store: bool) -> tuple[str, int]:
        if not isinstance(self.n_colors, numbers.Integral) or self.n_colors < 1:
            raise ValueError(f"n_colors={self.n_colors!r}, expected a positive integer")
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r}, expected one of {_ALGORITHMS}")
        if self.color_space not in SPACES:
            raise ValueError(f"color_space={self.color_space!r}, expected one of {SPACES}")
        for name in ("n_init", "max_iter"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}={value!r}, expected a positive integer")
        if not isinstance(self.tol, numbers.Real) or self.tol < 0:
            raise ValueError(f"tol={self.tol!r}, expected a non-negative number")
        if isinstance(self.init, str) and self.init not in ("k-means++", "random"):
            raise ValueError(f"init={self.init!r}, expected 'k-means++', 'random' or an array")
        algorithm = self.algorithm if self.algorithm != "auto" else \
            ("minibatch" if store else "lloyd")
        if algorithm == "minibatch" and not store:
            raise ValueError("algorithm='minibatch' streams batches from a store; for arrays "
                             "use 'lloyd' or 'auto' (exact K-Means on their colour histogram)")
        if store and not isinstance(self.init, str):
            raise ValueError("init as an array of centres applies to arrays, not stores")
        if isinstance(self.random_state, numbers.Integral):
            seed = int(self.random_state)
        else:
            seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        return algorithm, seed

    def _validate(self, X: Any, reset: bool) -> tuple[np.ndarray, tuple[int, ...], bool]:
        """``X`` as 2-d rows, the shape of its labels, and whether it holds colours."""
        ndim = getattr(X, "ndim", None)
        if ndim is None:
            ndim = np.asarray(X).ndim
        if ndim in (3, 4):  # an image or a stack of images: rows are its pixels
            arr = np.asarray(X)
            shape = arr.shape[:-1]
            rows = validate_data(self, arr.reshape(-1, arr.shape[-1]), reset=reset)
        else:
            rows = validate_data(self, X, reset=reset)
            shape = rows.shape[:1]
        colours = rows.dtype in _COLOUR_DTYPES
        if colours and rows.shape[1] != 3:
            raise ValueError(f"X holds {rows.dtype} colours with {rows.shape[1]} channels, "
                             "expected 3 (RGB)")
        if not reset:
            if colours != self.color_input_:
                fitted = "uint8/uint16 colours" if self.color_input_ else "numbers"
                raise ValueError(f"this model was fitted on {fitted}; X holds "
                                 f"{rows.dtype} values, expected the same kind")
        elif not colours and self.color_space != "rgb":
            raise ValueError(f"color_space={self.color_space!r} applies to uint8/uint16 "
                             f"colours; X holds {rows.dtype} values")
        return rows, shape, colours

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> ColorQuantizer:
        """Learn the palette from ``X`` (pixels, images, a Dask array or a store)."""
        store = _is_store(X)
        algorithm, seed = self._check_params(store)
        self.fit_result_ = None
        if store:
            return self._fit_store(X, algorithm, seed)
        if _is_dask(X):
            return self._fit_dask(X, seed)
        rows, shape, colours = self._validate(X, reset=True)
        self.color_input_ = colours
        if colours:
            from streamq.kmeans.codes import distinct_colours

            codes, counts = distinct_colours(_to_rgb8(rows))
            self._fit_colours(codes, counts, seed)
        else:
            self._fit_points(np.asarray(rows, dtype=np.float64), seed)
        self.labels_ = self._labels(rows, colours).reshape(shape)
        return self

    def _fit_store(self, X: Any, algorithm: str, seed: int) -> ColorQuantizer:
        from streamq.fit import fit
        from streamq.fit.lloyd import points
        from streamq.kmeans.nearest import inertia
        from streamq.store import Collection, Store

        target = X.store.location if isinstance(X, Collection) else X
        result = fit(target, overwrite=self.overwrite, progress=self.progress,
                     scheduler=self.scheduler, colors=self.n_colors, algorithm=algorithm,
                     color_space=self.color_space, init=self.init, n_init=self.n_init,
                     max_iter=self.max_iter, tol=float(self.tol), seed=seed)
        hist = Store.open(target).read_table("colors", ("code", "count"))
        self.color_input_ = True
        self.n_features_in_ = 3
        self.cluster_centers_ = np.asarray(result.centers, dtype=np.float64)
        self.palette_ = np.asarray(result.palette, dtype=np.uint8)
        self.inertia_ = inertia(points(hist["code"], result.color_space),
                                hist["count"].astype(np.float64), self.cluster_centers_)
        self.n_iter_ = int(result.steps)
        self.fit_result_ = result
        self.labels_ = self.predict(X)
        return self

    def _fit_dask(self, X: Any, seed: int) -> ColorQuantizer:
        import dask

        from streamq.kmeans.histogram import ColorTotals

        if X.dtype not in _COLOUR_DTYPES or X.ndim < 2 or X.shape[-1] != 3:
            raise ValueError(f"a Dask array X must hold uint8/uint16 colours, (..., 3); got "
                             f"{X.dtype} of shape {X.shape}")
        self.color_input_ = True
        self.n_features_in_ = 3
        X = X.rechunk({X.ndim - 1: -1})  # whole pixels in every block
        blocks = [dask.delayed(_block_colours)(b) for b in X.to_delayed().ravel()]
        totals = ColorTotals()
        for i in range(0, len(blocks), 64):  # a bounded number of partial counts at a time
            for codes, counts in dask.compute(*blocks[i:i + 64]):
                totals.add(codes, counts)
        codes, counts = totals.result()
        self._fit_colours(codes, counts, seed)
        self.labels_ = self.predict(X)
        return self

    def _fit_colours(self, codes: np.ndarray, counts: np.ndarray, seed: int) -> None:
        """Exact K-Means on a colour histogram, as the exact phase of ``streamq fit`` in its
        plainest form: the starts race to a fixed point on the coarse grid and the best
        ``FINISHERS`` finish on every colour (no early ranking, no finer grid)."""
        from streamq.fit.lloyd import FINISHERS, GRID_BITS, ensure_distinct, points
        from streamq.kmeans import converge, initial_centers
        from streamq.kmeans.codes import cell_means
        from streamq.kmeans.nearest import inertia
        from streamq.kmeans.plusplus import cell_layout

        k, space = int(self.n_colors), self.color_space
        if len(codes) < k:
            raise ValueError(f"X has {len(codes)} distinct colours, fewer than n_colors={k}")
        x = points(codes, space)
        w = counts.astype(np.float64)
        layout = cell_layout(x)
        if isinstance(self.init, str):
            gx, gw = cell_means(codes, w, x, GRID_BITS)
            if 2 * len(gx) > len(x):
                gx, gw = x, w
            glayout = cell_layout(gx)
            raced = []
            for j in range(self.n_init):
                start = initial_centers(gx, gw, k, self.init,
                                        np.random.default_rng([seed, 1000 + j]), glayout)
                res = converge(gx, gw, start, layout=glayout, tol=0, max_iter=self.max_iter)
                raced.append((res.inertia, j, res))
            raced.sort(key=lambda r: (r[0], r[1]))
            finished = []
            for _, j, grid in sorted(raced[:FINISHERS], key=lambda r: r[1]):
                res = converge(x, w, grid.centers, layout=layout, tol=float(self.tol),
                               max_iter=self.max_iter)
                finished.append((res.inertia, j, res.n_iter, res))
            _, _, n_iter, best = min(finished, key=lambda r: (r[0], r[1]))
        else:
            start = self._given_init(3)
            best = converge(x, w, start, layout=layout, tol=float(self.tol),
                            max_iter=self.max_iter)
            n_iter = best.n_iter
        centers = ensure_distinct(best.centers, x, space)
        self.cluster_centers_ = centers
        self.palette_ = to_rgb8(centers, space)
        self.inertia_ = inertia(x, w, centers)
        self.n_iter_ = int(n_iter)

    def _fit_points(self, rows: np.ndarray, seed: int) -> None:
        """Generic weighted K-Means on the distinct rows of ``rows`` (the same core)."""
        from streamq.kmeans import converge, kmeans

        k = int(self.n_colors)
        if len(rows) < k:
            raise ValueError(f"n_samples={len(rows)} should be >= n_colors={k}")
        x, w = np.unique(rows, axis=0, return_counts=True)
        if len(x) < k:
            raise ValueError(f"X has {len(x)} distinct samples, fewer than n_colors={k}")
        w = w.astype(np.float64)
        if isinstance(self.init, str):
            res = kmeans(x, w, k, np.random.default_rng(seed), init=self.init,
                         n_init=self.n_init, tol=float(self.tol), max_iter=self.max_iter)
        else:
            res = converge(x, w, self._given_init(x.shape[1]), tol=float(self.tol),
                           max_iter=self.max_iter)
        self.cluster_centers_ = res.centers
        self.palette_ = None
        self.inertia_ = float(res.inertia)
        self.n_iter_ = int(res.n_iter)

    def _given_init(self, d: int) -> np.ndarray:
        init = np.asarray(self.init, dtype=np.float64)
        if init.shape != (self.n_colors, d):
            raise ValueError(f"init has shape {init.shape}, expected ({self.n_colors}, {d})")
        return init

    # -- predict / transform ------------------------------------------------------------------
    def _labels(self, rows: np.ndarray, colours: bool) -> np.ndarray:
        if colours:
            return _colour_labels(rows, self.cluster_centers_, self.color_space)
        from streamq.kmeans.nearest import assign

        return assign(np.asarray(rows, np.float64), self.cluster_centers_)[0].astype(np.int32)

    def _lazy(self, X: Any, quantize: bool) -> Any:
        """Labels (or quantized pixels) of a Dask array or of every image of a store."""
        if _is_store(X):
            from streamq.store import Collection, open_store

            coll = X if isinstance(X, Collection) else open_store(X)
            return [self._lazy(img, quantize) for img in coll.to_dask("pixels")]
        if X.dtype not in _COLOUR_DTYPES or X.ndim < 2 or X.shape[-1] != 3:
            raise ValueError(f"a Dask array X must hold uint8/uint16 colours, (..., 3); got "
                             f"{X.dtype} of shape {X.shape}")
        X = X.rechunk({X.ndim - 1: -1})
        labels = X.map_blocks(_colour_labels, self.cluster_centers_, self.color_space,
                              drop_axis=X.ndim - 1, dtype=np.int32)
        if not quantize:
            return labels
        return labels.map_blocks(_lookup, self.palette_, new_axis=labels.ndim,
                                 chunks=labels.chunks + ((3,),), dtype=np.uint8)

    def predict(self, X: Any) -> Any:
        """Index of the nearest centre of every pixel, shaped like ``X`` without its last
        axis (``(n,)`` for rows, ``(H, W)`` for an image); lazy for a Dask array, a list of
        lazy ``(H, W)`` arrays for a store."""
        check_is_fitted(self)
        if _is_store(X) or _is_dask(X):
            if not self.color_input_:
                raise ValueError("this model was fitted on numbers, not colours; X holds colours")
            return self._lazy(X, quantize=False)
        rows, shape, colours = self._validate(X, reset=False)
        return self._labels(rows, colours).reshape(shape)

    def _quantized(self, labels: np.ndarray, colours: bool) -> np.ndarray:
        if not colours:
            return self.cluster_centers_[labels]
        assert self.palette_ is not None, "a model fitted on colours has a palette"
        return self.palette_[labels]

    def transform(self, X: Any) -> Any:
        """Every pixel replaced by its palette colour (uint8, the shape of ``X``), or for
        non-colour input every row by its centre; lazy for a Dask array, a list for a store."""
        check_is_fitted(self)
        if _is_store(X) or _is_dask(X):
            if not self.color_input_:
                raise ValueError("this model was fitted on numbers, not colours; X holds colours")
            return self._lazy(X, quantize=True)
        rows, shape, colours = self._validate(X, reset=False)
        return self._quantized(self._labels(rows, colours), colours).reshape(
            *shape, rows.shape[1])

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> Any:
        """``fit(X)``, then the labels of ``X`` (``labels_``)."""
        return self.fit(X, **kwargs).labels_

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """``fit(X)``, then ``X`` quantized (from ``labels_``, without labelling twice)."""
        self.fit(X, **fit_params)
        if _is_store(X) or _is_dask(X):
            return self.transform(X)
        labels = self.labels_
        rows = self.cluster_centers_.shape[1]
        return self._quantized(labels.reshape(-1), self.color_input_).reshape(*labels.shape, rows)
