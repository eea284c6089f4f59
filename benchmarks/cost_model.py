"""Fit a per-stage cost model to ``benchmarks/scale.py`` results and extrapolate it.

Reads the JSON files ``scale.py --out DIR`` writes (``scale-w1.json``, ``scale-w2.json``: the
same sizes with 1 and 2 workers) and, per stage:

- fits wall time ``t = a + b * Mpx`` on every size but the largest, and checks the prediction
  for the largest run (the model must land within 25%);
- turns the slope into worker-seconds per Mpx (``b * workers``; equal for 1 and 2 workers when
  the stage scales), and reports bytes written per Mpx, tasks per Gpx and peak RSS per worker;
- extrapolates to a collection of ``--images`` images of ``--side`` x ``--side`` pixels on
  ``--workers`` workers.

    python benchmarks/cost_model.py /tmp/bench-out/scale --images 1e9 --workers 100 1000

Prints markdown for ``docs/scaling.md``; ``--json FILE`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("ingest", "fit", "quantize", "export")
GiB = 2**30


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    data["nworkers"] = int(data["settings"]["nworkers"])
    return data


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` (a line through one point when there is one point)."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def stage_model(run: dict[str, Any], stage: str) -> dict[str, Any]:
    sizes = [s for s in run["sizes"] if s["stages"].get(stage, {}).get("status") == "ok"]
    sizes.sort(key=lambda s: s["n_pixels"])
    mpx = [s["n_pixels"] / 1e6 for s in sizes]
    wall = [s["stages"][stage]["wall_s"] for s in sizes]
    w = run["nworkers"]
    out: dict[str, Any] = {"workers": w, "mpx": mpx, "wall_s": wall}
    if len(sizes) >= 3:
        a, b = _line(mpx[:-1], wall[:-1])
        predicted = a + b * mpx[-1]
        out["holdout"] = {"mpx": mpx[-1], "predicted_s": predicted, "measured_s": wall[-1],
                          "error": predicted / wall[-1] - 1}
    a, b = _line(mpx, wall)
    st = [s["stages"][stage] for s in sizes]
    worker_peaks = [max([v for r, v in x["peak_rss"].items() if r.startswith("worker")] or [0])
                    for x in st]
    out.update({
        "fixed_s": a, "s_per_mpx": b, "worker_s_per_mpx": b * w,
        "written_bytes_per_mpx": float(np.median([x["bytes_written_on_disk"] / m
                                                   for x, m in zip(st, mpx, strict=True)])),
        "read_bytes_per_mpx": (float(np.median([x["bytes_read_model"] / m
                                                 for x, m in zip(st, mpx, strict=True)]))
                               if all(x.get("bytes_read_model") for x in st) else None),
        "tasks_per_gpx": float(np.median([x["tasks_per_gpx"] for x in st])),
        "tasks": [x["tasks"] for x in st],
        "peak_worker_rss": max(worker_peaks),
        "peak_total_rss": max(x["peak_rss_total"] for x in st),
        "client_peak_rss": max(x["peak_rss"].get("client", 0) for x in st),
    })
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="folder with scale-w*.json")
    ap.add_argument("--images", type=float, default=1e9, help="images to extrapolate to")
    ap.add_argument("--side", type=int, default=250, help="their side in pixels")
    ap.add_argument("--workers", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    runs = sorted((_load(p) for p in args.results.glob("scale-w*.json")),
                  key=lambda r: r["nworkers"])
    if not runs:
        raise SystemExit(f"no scale-w*.json in {args.results}")
    models = {r["nworkers"]: {s: stage_model(r, s) for s in STAGES} for r in runs}

    lines = ["| stage | workers | fixed s | s/Mpx | worker-s/Mpx | written B/px | tasks/Gpx "
             "| peak RSS/worker GiB | largest run: predicted / measured s (error) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for w, per in models.items():
        for s, m in per.items():
            h = m.get("holdout")
            hold = (f"{h['predicted_s']:.1f} / {h['measured_s']:.1f} ({h['error']:+.0%})"
                    if h else "—")
            lines.append(f"| {s} | {w} | {m['fixed_s']:.1f} | {m['s_per_mpx'] * 1e3:.2f} ms "
                         f"| {m['worker_s_per_mpx'] * 1e3:.2f} ms "
                         f"| {m['written_bytes_per_mpx'] / 1e6:.2f} | {m['tasks_per_gpx']:.0f} "
                         f"| {m['peak_worker_rss'] / GiB:.2f} | {hold} |")
    table = "\n".join(lines)

    # Extrapolation from the run with the most workers (the best per-worker estimate of a
    # cluster), stage by stage: fixed cost + worker-seconds per Mpx spread over N workers.
    base = models[max(models)]
    total_mpx = args.images * args.side * args.side / 1e6
    ex = ["| stage | " + " | ".join(f"{n} workers" for n in args.workers) + " | tasks | "
          "written |", "|---|" + "---|" * len(args.workers) + "---|---|"]
    extrap: dict[str, Any] = {}
    for s, m in base.items():
        if s == "fit":  # sampling bounds the fit: its time and tasks do not grow with the collection
            times = [max(m["wall_s"])] * len(args.workers)
            tasks, written = float(max(m["tasks"])), 0.0
        else:
            times = [m["fixed_s"] + m["worker_s_per_mpx"] * total_mpx / n for n in args.workers]
            tasks = m["tasks_per_gpx"] * total_mpx / 1e3
            written = m["written_bytes_per_mpx"] * total_mpx
        extrap[s] = {"seconds": dict(zip(args.workers, times, strict=True)), "tasks": tasks,
                     "written_bytes": written}
        ex.append(f"| {s} | " + " | ".join(f"{t / 3600:.2f} h" for t in times)
                  + f" | {tasks:,.0f} | {written / 1e12:.1f} TB |")
    print(table)
    print()
    print(f"Extrapolated to {args.images:.3g} images of {args.side}x{args.side} "
          f"({total_mpx / 1e6:.3g} Tpx):")
    print("\n".join(ex))
    out = {"models": models, "extrapolation": extrap, "images": args.images, "side": args.side}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


if __name__ == "__main__":
    main()
