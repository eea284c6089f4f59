"""Image descriptors: one vector per image, from its palette labels (and its pixels).

``histogram``: the image's histogram over the shared palette, K bins of label counts divided
by the image's pixel count (the bins sum to 1). ``histogram+moments``: the same, followed by
the mean and the (population) standard deviation of each RGB channel of the image's stored
pixels, divided by 255: six values in [0, 1].

Descriptors are written to ``groups/descriptors``, ``(N, D)`` float64 in chunks of
``rows_per_chunk`` rows (image ids). The work is planned as runs of whole row chunks
(``groups/tasks``), about ``pixels_per_task`` image pixels each: one task per run, so no
chunk has two writers. Images straddle label shards, so a task reads the label (and pixel)
*ranges* of its images, at most about ``pixels_per_task`` pixels at a time, writes its rows,
then its completion record in ``groups/describe_records``; a rerun runs only the tasks
without a record.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from streamq.errors import StreamQError
from streamq.scheduler import Runner
from streamq.stage import Task, run_tasks
from streamq.store import PIXELS, Collection, Store, open_array, runs_by_weight, write_record
from streamq.store.names import (
    GROUP_DESCRIBE_RECORDS,
    GROUP_DESCRIPTORS,
    GROUP_TASKS,
    labels_path,
)

__all__ = ["DESCRIPTORS", "KINDS", "N_MOMENTS", "describe", "describe_image", "n_features",
           "plan", "read_plan"]

log = logging.getLogger(__name__)

DESCRIPTORS = GROUP_DESCRIPTORS
RECORDS = GROUP_DESCRIBE_RECORDS
TASKS = GROUP_TASKS
KINDS = ("histogram", "histogram+moments")
N_MOMENTS = 6


def n_features(kind: str, k: int) -> int:
    """Length of a descriptor of ``kind`` for a palette of ``k`` colours."""
    return k + (N_MOMENTS if kind == "histogram+moments" else 0)


def describe_image(labels: np.ndarray, k: int, rgb: np.ndarray | None = None) -> np.ndarray:
    """The descriptor of one image from its ``(n,)`` labels and, for moments, ``(n, 3)`` pixels.

    Moments come from exact integer sums, so a flat image has a standard deviation of
    exactly 0.
    """
    n = len(labels)
    hist = np.bincount(labels, minlength=k)[:k] / max(n, 1)
    if rgb is None:
        return hist
    values = np.arange(256, dtype=np.int64)
    moments = np.zeros(N_MOMENTS)
    for c in range(3):
        counts = np.bincount(rgb[:, c], minlength=256).astype(np.int64)
        s1, s2 = int(counts @ values), int(counts @ values ** 2)
        if n:
            moments[c] = s1 / n / 255
            moments[3 + c] = np.sqrt((n * s2 - s1 * s1) / (n * n)) / 255
    return np.concatenate([hist, moments])


def plan(coll: Collection, rows_per_chunk: int, pixels_per_task: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row_start, row_stop)`` of every task: runs of whole row chunks of about
    ``pixels_per_task`` image pixels."""
    n = len(coll)
    sizes = coll.heights * coll.widths
    bounds = list(range(0, n, rows_per_chunk)) + [n]
    weights = [int(sizes[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    runs = runs_by_weight(weights, pixels_per_task)
    start = np.asarray([bounds[r[0]] for r in runs], dtype=np.int64)
    stop = np.asarray([bounds[r[-1] + 1] for r in runs], dtype=np.int64)
    return start, stop


def prepare(st: Store, coll: Collection, kind: str, k: int, rows_per_chunk: int,
            pixels_per_task: int) -> int:
    """Write the task plan and create empty descriptors and records; return the task count."""
    start, stop = plan(coll, rows_per_chunk, pixels_per_task)
    st.write_table(TASKS, {"row_start": start, "row_stop": stop})
    st.create_rows(DESCRIPTORS, (len(coll), n_features(kind, k)), rows_per_chunk, np.float64)
    st.create_records(RECORDS, len(start))
    return len(start)


def read_plan(st: Store) -> list[tuple[int, int]]:
    """The ``(row_start, row_stop)`` of every task, as planned."""
    t = st.read_table(TASKS, ("row_start", "row_stop"))
    return [(int(a), int(b)) for a, b in zip(t["row_start"], t["row_stop"], strict=True)]


def _describe_task(args: dict[str, Any]) -> dict[str, Any]:
    store, k, kind = args["store"], args["k"], args["kind"]
    r0, r1 = args["rows"]
    labels = open_array(store, labels_path())
    pixels = open_array(store, PIXELS) if kind == "histogram+moments" else None
    images = args["images"]
    out = np.zeros((r1 - r0, n_features(kind, k)))
    for run in runs_by_weight([size for _, _, size in images], args["budget"]):
        part = [images[j] for j in run]
        a = min(off for _, off, _ in part)
        b = max(off + size for _, off, size in part)
        lab = np.asarray(labels[a:b])
        rgb = np.asarray(pixels[a:b]) if pixels is not None else None
        for image_id, off, size in part:
            seg = slice(off - a, off - a + size)
            out[image_id - r0] = describe_image(lab[seg], k, rgb[seg] if rgb is not None else None)
    open_array(store, DESCRIPTORS, mode="r+")[r0:r1] = out
    report = {"rows": [r0, r1], "pixels": int(sum(size for _, _, size in images))}
    write_record(store, RECORDS, args["task"], report)
    return report


def describe(run: Runner, st: Store, coll: Collection, kind: str, k: int, pixels_per_task: int,
             progress: bool | None = None) -> None:
    """Run every describe task that has no completion record yet (see :func:`prepare`)."""
    sizes = coll.heights * coll.widths
    tasks = read_plan(st)
    records = st.records(RECORDS)
    todo = []
    for i, (r0, r1) in enumerate(tasks):
        if records[i]:
            continue
        images = [(j, int(coll.offsets[j]), int(sizes[j])) for j in range(r0, r1)]
        args = {"store": st.location, "task": i, "rows": [r0, r1], "images": images, "k": k,
                "kind": kind, "budget": pixels_per_task}
        todo.append(Task(_describe_task, args, r1 - r0))
    run_tasks(run, todo, "describing", "image", progress, total=len(coll))
    if any(not r for r in st.records(RECORDS)):
        raise StreamQError(f"{st.path}: some descriptor tasks have no completion record; "
                           "rerun `streamq cluster-images`")
