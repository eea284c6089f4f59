"""The RGBA Lloyd and k-means++ of :func:`streamq.kmeans.rgba.kmeans_rgba` against the plain ones.

``kmeans_rgba`` ran a NumPy weighted Lloyd that searched all K centres for every distinct
colour at every iteration; it now runs the core :func:`streamq.kmeans.lloyd` on the 4-d
points (distance bounds, exact sums). This times ``kmeans_rgba`` (``n_init`` 4, as the
per-image fit of ``alpha_vs_pngquant.py``) on each image's own RGBA histogram with either
Lloyd, the two interleaved round by round (median of ``--repeats``) so that a busy machine
slows both alike, and says whether they give the same palette.

``--compare plusplus`` times the k-means++ starts instead: the plain loop over every point
for every candidate (``streamq.kmeans.plusplus._kmeanspp_plain``, which 4-d points took
before) against the search tree that now gives its centres (:func:`_kmeanspp_tree`), the
whole ``kmeans_rgba`` and the k-means++ calls within it, wall and CPU time (the machine may
be busy: CPU time is the steadier), and whether the palettes are the same (they must be).

Images (found on this machine, as ``alpha_vs_pngquant.py``): ``icons`` (installed icons with
soft edges) and ``cutouts`` (the bundled photos under a soft elliptical mask, downscaled to
``--cutout-side`` pixels wide)::

    python benchmarks/rgba_lloyd.py                      # K = 16, 64, 256
    python benchmarks/rgba_lloyd.py --colors 64 --repeats 1
    python benchmarks/rgba_lloyd.py --compare plusplus --repeats 5
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alpha_vs_pngquant import find_icons, soft_mask  # noqa: E402
from common import markdown_table  # noqa: E402

# by module path (the RGBA k-means moved from ``streamq.fit.alpha`` to ``streamq.kmeans.rgba``)
alpha = importlib.import_module("streamq.kmeans.rgba")
plusplus = importlib.import_module("streamq.kmeans.plusplus")
starts = importlib.import_module("streamq.kmeans.starts")


def plain_lloyd(x: np.ndarray, w: np.ndarray, centers: np.ndarray, fixed: int, tol: float,
                max_iter: int) -> dict[str, Any]:
    """The RGBA Lloyd before the core's: every point against every centre each iteration,
    float ``bincount`` means; an empty cluster takes the farthest point (which stays counted
    in its old cluster's mean for that update)."""
    from streamq.kmeans.nearest import assign

    c = np.array(centers, dtype=np.float64)
    k = len(c)
    wsum = float(w.sum())
    mean = (w[:, None] * x).sum(0) / wsum
    threshold = tol * float((w * ((x - mean) ** 2).sum(1)).sum() / wsum / x.shape[1])
    labels, d = assign(x, c)
    history: list[tuple[int, float, int]] = []
    stop, it = "max_iter", 0
    while it < max_iter:
        n = np.bincount(labels, weights=w, minlength=k)
        new = c.copy()
        for j in range(x.shape[1]):
            s = np.bincount(labels, weights=w * x[:, j], minlength=k)
            with np.errstate(invalid="ignore", divide="ignore"):
                new[:, j] = np.where(n > 0, s / np.maximum(n, 1e-300), c[:, j])
        new[:fixed] = c[:fixed]
        empty = [j for j in range(fixed, k) if n[j] == 0]
        if empty:
            far = np.argsort(-d, kind="stable")[:len(empty)]
            new[empty] = x[far]
        shift = float(((new - c) ** 2).sum())
        c = new
        it += 1
        new_labels, d = assign(x, c)
        changed = int((new_labels != labels).sum())
        labels = new_labels
        history.append((it, shift, changed))
        if tol > 0 and shift <= threshold:
            stop = "tol"
            break
        if changed == 0 and not empty:
            stop = "labels"
            break
    return {"centers": c, "inertia": float((w * d).sum()), "n_iter": it, "stop": stop,
            "history": history}


def histogram(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from streamq.decode import premultiply
    from streamq.rgba import count_rgba

    return count_rgba(premultiply(rgba).reshape(-1, 3), rgba[..., 3].reshape(-1))


def load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def cutouts(side: int) -> list[np.ndarray]:
    from streamq.examples import source_photos

    out = []
    for _, photo in sorted(source_photos().items()):
        h = round(photo.shape[0] * side / photo.shape[1])
        small = np.asarray(Image.fromarray(photo).resize((side, h), Image.Resampling.BOX))
        out.append(np.dstack([small, soft_mask(h, side)]))
    return out


def run_set(hists: list[tuple[np.ndarray, np.ndarray]], k: int, lloyd: Any) -> tuple[float, list]:
    alpha._lloyd = lloyd
    t0 = time.perf_counter()
    res = [alpha.kmeans_rgba(c, n, min(k, len(c)), n_init=4) for c, n in hists]
    return time.perf_counter() - t0, res


class Timed:
    """``starts.kmeans_plusplus`` wrapped: the wall and CPU seconds spent in it."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.inner = starts.kmeans_plusplus

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - w0
            self.cpu += time.process_time() - c0


def run_plusplus(hists: list[tuple[np.ndarray, np.ndarray]], k: int, tree: bool
                 ) -> tuple[list[float], list]:
    """``kmeans_rgba`` on every histogram with k-means++ by the tree (as it is) or by the
    plain loop (the tree's threshold out of reach): [wall, CPU, k-means++ wall, k-means++
    CPU] seconds, and the results."""
    saved = plusplus.TREE_FROM
    plusplus.TREE_FROM = saved if tree else 10**18
    timed = Timed()
    starts.kmeans_plusplus = timed
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        res = [alpha.kmeans_rgba(c, n, min(k, len(c)), n_init=4) for c, n in hists]
        times = [time.perf_counter() - w0, time.process_time() - c0, timed.wall, timed.cpu]
    finally:
        plusplus.TREE_FROM = saved
        starts.kmeans_plusplus = timed.inner
    return times, res


def compare_plusplus(sets: dict[str, list], colors: list[int], repeats: int) -> None:
    run_plusplus(sets["icons"][:2], 256, True)  # numba compiled or loaded
    run_plusplus(sets["icons"][:2], 256, False)
    rows = []
    for name, hists in sets.items():
        for k in colors:
            before, after = [], []
            for _ in range(repeats):
                tb, old = run_plusplus(hists, k, False)
                ta, new = run_plusplus(hists, k, True)
                before.append(tb)
                after.append(ta)
            same = sum(np.array_equal(o["metric_centers"], n["metric_centers"])
                       and np.array_equal(o["palette"], n["palette"])
                       and np.array_equal(o["alpha"], n["alpha"]) for o, n in zip(old, new, strict=True))
            b = [statistics.median(t[i] for t in before) for i in range(4)]
            a = [statistics.median(t[i] for t in after) for i in range(4)]
            rows.append([name, k, len(hists), f"{b[0]:.2f} / {b[1]:.2f}", f"{a[0]:.2f} / {a[1]:.2f}",
                         f"{b[1] / a[1]:.2f}x", f"{b[2]:.3f} / {b[3]:.3f}", f"{a[2]:.3f} / {a[3]:.3f}",
                         f"{b[3] / a[3]:.2f}x", f"{same}/{len(hists)}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    print(markdown_table(["set", "K", "images", "kmeans_rgba, plain k-means++ (s wall / CPU)",
                          "kmeans_rgba, tree (s wall / CPU)", "CPU speed-up",
                          "k-means++ plain (s wall / CPU)", "k-means++ tree (s wall / CPU)",
                          "k-means++ CPU speed-up", "same centres"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--colors", default="16,64,256")
    ap.add_argument("--icons", type=int, default=60)
    ap.add_argument("--cutouts", type=int, default=3, help="this many bundled photos")
    ap.add_argument("--cutout-side", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", choices=("lloyd", "plusplus"), default="lloyd")
    args = ap.parse_args()
    core = alpha._lloyd
    sets = {"icons": [histogram(load(p)) for p in find_icons(args.icons)],
            "cutouts": [histogram(a) for a in cutouts(args.cutout_side)[:args.cutouts]]}
    for name, hists in sets.items():
        print(f"{name}: {len(hists)} images, distinct colours per image "
              f"{int(np.median([len(c) for c, _ in hists]))} median, "
              f"{max(len(c) for c, _ in hists)} max", flush=True)
    if args.compare == "plusplus":
        compare_plusplus(sets, [int(k) for k in args.colors.split(",")], args.repeats)
        return
    run_set(sets["icons"][:2], 16, core)  # numba compiled or loaded
    rows = []
    for name, hists in sets.items():
        for k in (int(k) for k in args.colors.split(",")):
            before, after = [], []
            for _ in range(args.repeats):
                tb, old = run_set(hists, k, plain_lloyd)
                ta, new = run_set(hists, k, core)
                before.append(tb)
                after.append(ta)
            same = sum(np.array_equal(o["palette"], n["palette"])
                       and np.array_equal(o["alpha"], n["alpha"]) for o, n in zip(old, new, strict=True))
            iters = sum(o["iterations"] == n["iterations"] for o, n in zip(old, new, strict=True))
            diff = max(float(np.abs(o["metric_centers"] - n["metric_centers"]).max())
                       for o, n in zip(old, new, strict=True))
            b, a = statistics.median(before), statistics.median(after)
            rows.append([name, k, len(hists), f"{b:.2f}", f"{a:.2f}", f"{b / a:.1f}x",
                         f"{same}/{len(hists)}", f"{iters}/{len(hists)}", f"{diff:.1e}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    alpha._lloyd = core
    print(markdown_table(["set", "K", "images", "plain Lloyd (s)", "core Lloyd (s)", "speed-up",
                          "same palette", "same iterations", "max centre diff"], rows))


if __name__ == "__main__":
    main()
