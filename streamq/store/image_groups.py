"""Image groups read back: :class:`ImageGroups` (what ``streamq cluster-images`` left),
:func:`load_groups` and the section :func:`groups_summary` shows in ``streamq info``.

The groups are made with the shared palette's labels, so they are current only for that
palette (:func:`streamq.store.results.result_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamq.errors import StageNotReadyError
from streamq.fs import Location
from streamq.store.layout import Store
from streamq.store.names import (
    GROUP_CENTERS,
    GROUP_DISTANCE,
    GROUP_LABELS,
    GROUP_OF_IMAGE,
    GROUP_OVERLAP,
    GROUPS,
)
from streamq.store.results import result_state

__all__ = ["ImageGroups", "groups_summary", "load_groups"]


@dataclass
class ImageGroups:
    """Image groups of a store; ``str()`` is the one-line summary the CLI prints.

    ``group[i]`` is image ``i``'s group, ``distance[i]`` its Euclidean distance to that
    group's centre; ``centers`` are ``(G, D)`` in the clustered space (descriptors with
    moments weighted). ``ari``, ``nmi`` and the contingency table compare the groups with
    the images' labels (None when no image has a label).
    """

    store: str
    groups: int
    descriptor: str
    moments_weight: float
    k: int
    group: np.ndarray  # (N,) int32
    distance: np.ndarray  # (N,) float64
    centers: np.ndarray  # (G, D) float64
    sizes: np.ndarray  # (G,) int64
    ari: float | None
    nmi: float | None
    label_names: list[str]  # the columns of the contingency table
    overlap: dict[str, np.ndarray]  # non-zero cells: group, label (index), count
    steps: int
    stop_reason: str
    inertia: float  # mean squared distance of an image to its group centre
    seconds: float
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "grouped"

    @property
    def contingency(self) -> np.ndarray:
        """``(G, L)`` int64: images of group ``g`` with label ``label_names[l]``."""
        table = np.zeros((self.groups, len(self.label_names)), dtype=np.int64)
        table[self.overlap["group"], self.overlap["label"]] = self.overlap["count"]
        return table

    def members(self, g: int) -> np.ndarray:
        """Ids of the images of group ``g``, closest to its centre first."""
        ids = np.flatnonzero(self.group == g)
        return ids[np.argsort(self.distance[ids], kind="stable")]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the per-image arrays are left out: see :func:`load_groups`)."""
        return {"store": self.store, "groups": self.groups, "descriptor": self.descriptor,
                "moments_weight": self.moments_weight, "k": self.k, "sizes": self.sizes.tolist(),
                "ari": self.ari, "nmi": self.nmi, "steps": self.steps,
                "stop_reason": self.stop_reason, "inertia": self.inertia,
                "seconds": self.seconds, "seed": self.seed, "config": self.config,
                "status": self.status}

    def __str__(self) -> str:
        text = (f"{self.status}: {len(self.group)} images in {self.groups} groups "
                f"({self.descriptor}, K={self.k}), sizes {' '.join(map(str, self.sizes))}")
        if self.ari is not None:
            text += f"; ARI {self.ari:.3f}, NMI {self.nmi:.3f} against the image labels"
        return text + f"; {self.steps} steps, stopped: {self.stop_reason}"


def load_groups(store: str | Location, storage_options: dict[str, Any] | None = None) -> ImageGroups:
    """The image groups saved in ``store`` by :func:`cluster_images`."""
    st = Store.open(store, storage_options=storage_options)
    sec = st.section(GROUPS)
    state = result_state(st, GROUPS)
    if state == "stale":
        raise StageNotReadyError(f"{st.path}: the image groups are stale (the palette was "
                                 "refitted)", "streamq quantize", "streamq cluster-images")
    if state != "complete":
        raise StageNotReadyError(f"{st.path} has no image groups", "streamq cluster-images")
    s, cfg = sec["summary"], sec["config"]
    cells = st.read_table(GROUP_OVERLAP, ("group", "label", "count"))
    return ImageGroups(
        store=st.path, groups=s["groups"], descriptor=cfg["descriptor"],
        moments_weight=cfg["moments_weight"], k=sec["k"],
        group=np.asarray(st.array(GROUP_OF_IMAGE)[:]), distance=np.asarray(st.array(GROUP_DISTANCE)[:]),
        centers=np.asarray(st.array(GROUP_CENTERS)[:]), sizes=np.asarray(s["sizes"], dtype=np.int64),
        ari=s["ari"], nmi=s["nmi"],
        label_names=[str(v) for v in st.read_table(GROUP_LABELS, ("name",))["name"]],
        overlap={key: v.astype(np.int64) for key, v in cells.items()},
        steps=s["steps"], stop_reason=s["stop_reason"], inertia=s["inertia"],
        seconds=sec.get("seconds", 0.0), seed=cfg["seed"], config=cfg)


def groups_summary(store: Store) -> dict[str, Any] | None:
    """The groups section of an open store for ``streamq info`` (None when there is none)."""
    sec = store.section(GROUPS)
    if not sec:
        return None
    state = result_state(store, GROUPS)
    cfg = sec.get("config", {})
    return {"state": state, "descriptor": cfg.get("descriptor"), "k": sec.get("k"),
            **{key: sec.get("summary", {}).get(key) for key in
               ("groups", "sizes", "ari", "nmi", "n_labels", "steps", "stop_reason")}}
