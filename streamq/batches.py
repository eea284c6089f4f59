"""Pixel streaming: seeded, collection-wide samples of pixels, drawn by Dask tasks.

The unit of reading is a *block*: one inner chunk of the sharded pixel array (default
256 Ki pixels, about 0.8 MB), which Zarr reads without touching the rest of its shard.
A *draw* is identified by ``(seed, stream, index)`` and its content depends on nothing
else, so batches are the same whatever the scheduling or the number of workers. Draws
come in rounds that together pick every block about once (systematic sampling in
proportion to each block's valid pixels, shuffled); a draw reads its ``reads`` picked
blocks once each and takes an equal share of its pixels from each, uniformly among the
block's valid pixels. Every pixel of the collection is equally likely to be drawn, and a
few draws already cover the collection evenly (low variance), which matters for the
validation estimate and the polish sample.

Nothing here is specific to pixels: a source over a 2-d array of one row per image
(:meth:`PixelSource.whole`) draws image descriptors the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streamq.fs import Location
from streamq.store.names import PIXELS

if TYPE_CHECKING:
    from streamq.store import Collection

__all__ = ["PixelSource", "draw_pixels", "draw_sample", "draw_task"]

STREAM_INIT = 0
STREAM_VALIDATION = 1
STREAM_TRAIN = 2
STREAM_POLISH = 3
SAMPLE_PER_READ = 1_024  # pixels taken from each block read by the init/validation/polish samples


@dataclass(frozen=True)
class PixelSource:
    """Where the valid pixels of a collection are: runs of stored images in ``pixels`` (or
    the rows of another array of the store, ``array``)."""

    store: Location  # the store (tasks open it themselves)
    chunk: int
    run_start: np.ndarray  # int64, sorted, disjoint runs [start, stop) of valid pixels
    run_stop: np.ndarray
    weights: np.ndarray  # float64 per chunk: valid pixels in it
    array: str = PIXELS  # the array read, inside the store

    @classmethod
    def from_images(cls, store: Location, chunk: int, n_chunks: int,
                    offsets: np.ndarray, sizes: np.ndarray, array: str = PIXELS) -> PixelSource:
        order = np.argsort(offsets, kind="stable")
        starts, stops = offsets[order].astype(np.int64), (offsets + sizes)[order].astype(np.int64)
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        if len(starts):
            first = np.flatnonzero(np.concatenate([[True], starts[1:] != stops[:-1]]))
            run_start = starts[first]
            run_stop = np.concatenate([stops[first[1:] - 1], stops[-1:]])
        else:
            run_start = run_stop = np.zeros(0, np.int64)
        weights = np.zeros(n_chunks, dtype=np.float64)
        for a, b in zip(run_start, run_stop, strict=True):
            c0, c1 = a // chunk, (b - 1) // chunk
            for c in range(c0, c1 + 1):
                weights[c] += min(b, (c + 1) * chunk) - max(a, c * chunk)
        return cls(store, chunk, run_start, run_stop, weights, array)

    @classmethod
    def of_collection(cls, coll: Collection) -> PixelSource:
        """The stored images' pixels of ``coll``, read by the store's blocks (the gaps that
        images which failed to decode leave in ``pixels`` excluded)."""
        st = coll.store
        _, block = st.pixel_layout()
        n_blocks = max(1, -(-int(st.pixels().shape[0]) // block))
        return cls.from_images(st.location, block, n_blocks, coll.offsets, coll.heights * coll.widths)

    @classmethod
    def whole(cls, store: Location, array: str, chunk: int, n_rows: int) -> PixelSource:
        """Every row of ``array`` (``n_rows`` rows) of ``store``, read in chunks of ``chunk`` rows."""
        n_chunks = max(1, -(-n_rows // chunk))
        return cls.from_images(store, chunk, n_chunks, np.zeros(1, np.int64),
                               np.full(1, n_rows, np.int64), array)

    @property
    def n_valid(self) -> int:
        return int(self.weights.sum())

    def chunk_runs(self, c: int, c_stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Valid runs inside chunk ``c`` (chunks ``[c, c_stop)`` if given), relative to the
        first pixel of chunk ``c``."""
        lo, hi = c * self.chunk, (c + 1 if c_stop is None else c_stop) * self.chunk
        i0 = int(np.searchsorted(self.run_stop, lo, side="right"))
        i1 = int(np.searchsorted(self.run_start, hi, side="left"))
        a = np.maximum(self.run_start[i0:i1], lo) - lo
        b = np.minimum(self.run_stop[i0:i1], hi) - lo
        return a, b


def chunk_picks(source: PixelSource, seed: int, stream: int, block: int, n_picks: int) -> np.ndarray:
    """``n_picks`` chunk ids for one block of draws: systematic sampling, shuffled.

    Each chunk is picked ``n_picks * w_c / W`` times rounded up or down (its share of the
    valid pixels), so a block of draws covers the collection evenly; the shuffle spreads
    the picks of neighbouring chunks over the block's draws.
    """
    rng = np.random.default_rng([seed, stream, block, 0x5EED])
    cum = np.cumsum(source.weights)
    points = (rng.random() + np.arange(n_picks)) * (cum[-1] / n_picks)
    picks = np.minimum(np.searchsorted(cum, points, side="right"), len(cum) - 1)
    return rng.permutation(picks)


def draws_per_round(source: PixelSource, reads: int) -> int:
    """How many draws share one block of chunk picks (about one pick per chunk)."""
    return max(1, -(-len(source.weights) // reads))


def draw_pixels(source: PixelSource, seed: int, stream: int, index: int, n: int,
                reads: int) -> np.ndarray:
    """Draw ``n`` pixels (``(n, 3)`` uint8), a pure function of ``(seed, stream, index)``.

    The draw reads ``reads`` chunks, its slice of the block's
    :func:`chunk_picks`, takes an equal share of the pixels from each pick, uniformly among
    the chunk's valid pixels, and returns them shuffled.
    """
    from streamq.store import open_array

    per_block = draws_per_round(source, reads)
    block, pos = divmod(index, per_block)
    picks = chunk_picks(source, seed, stream, block, per_block * reads)
    slots = picks[pos * reads:(pos + 1) * reads]
    rng = np.random.default_rng([seed, stream, index])
    share = np.full(len(slots), n // len(slots))
    share[: n % len(slots)] += 1
    arr = open_array(source.store, source.array)
    reader = _block_reader(source, arr)
    parts = []
    for c in np.unique(slots):
        m = int(share[slots == c].sum())
        a, b = source.chunk_runs(int(c))
        lengths = b - a
        cum = np.cumsum(lengths)
        u = rng.integers(0, int(cum[-1]), size=m)
        r = np.searchsorted(cum, u, side="right")
        pos_in_chunk = a[r] + (u - (cum[r] - lengths[r]))
        lo = int(c) * source.chunk
        data = reader.read(int(c), scratch=True) if reader else np.asarray(arr[lo:lo + int(b[-1])])
        parts.append(data[pos_in_chunk])
    out = np.concatenate(parts)
    return out[rng.permutation(len(out))]


def _block_reader(source: PixelSource, arr: Any) -> Any:
    """A :class:`~streamq.store.shards.LocalShards` of ``arr`` when the source's chunks are
    its blocks on a local disk (the pixel array), else None (read through Zarr)."""
    from streamq.store.shards import LocalShards

    reader = LocalShards.of(source.store, source.array, arr)
    return reader if reader is not None and reader.chunk == source.chunk else None


def draw_task(args: tuple[PixelSource, int, int, int, int, int]) -> np.ndarray:
    """:func:`draw_pixels` of one argument tuple (the form a Dask task is given)."""
    return draw_pixels(*args)


def draw_sample(run: Any, source: PixelSource, seed: int, stream: int, n: int,
                reads: int) -> np.ndarray:
    """``n`` rows drawn collection-wide by Dask tasks (``run``: a ``streamq.scheduler.Runner``),
    ``SAMPLE_PER_READ`` from each chunk read, in a fixed order."""
    per_task = SAMPLE_PER_READ * reads
    parts = [(i, min(per_task, n - i * per_task)) for i in range(-(-n // per_task))]
    results = run.map_ordered(draw_task, [(source, seed, stream, i, m, reads) for i, m in parts])
    return np.concatenate(results) if results else np.zeros((0, 3), np.uint8)
