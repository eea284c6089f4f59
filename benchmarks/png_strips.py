"""A PNG over max_pixels read in strips: decoder speeds, and the build of the test image.

Builds (once, cached in ``--workdir``) a ``--size`` x ``--size`` PNG (default 14000: 196 Mpx,
over the default ``ingest.max_pixels`` of 179 Mpx) of crops of the bundled photos
(:func:`streamq.examples.write_mosaic`, then Pillow's PNG writer at its default level), and
a 50 Mpx one (``--small``) for the decoder comparison. Then times, on the small PNG:

- Pillow's whole decode (what a PNG under the limit costs);
- pypng's row reader (``asDirect``), over the first ``--pypng-rows`` rows only (it is slow);
- streamq's strip reader (:mod:`streamq.ingest.png_rows`: zlib + a numba unfilter kernel),
  the whole image in bands of ``BAND_PIXELS``, after one warm-up call (kernel compiled).

The ingest of the big PNG is timed from the command line, for its peak RSS::

    /usr/bin/time -v streamq -q ingest /tmp/streamq-bench/png-14000 /tmp/png.zarr \\
        --scheduler threads --overwrite

Run from the repository root::

    python benchmarks/png_strips.py
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from PIL import Image

from streamq.examples import write_mosaic
from streamq.ingest import bands, png_rows


def build(workdir: Path, size: int, name: str) -> Path:
    """A ``size`` x ``size`` PNG of photo crops in a folder of its own, built once."""
    root = workdir / name
    path = root / "image.png"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tif = workdir / f"{name}.tif"
        write_mosaic(tif, size, size, seed=0)
        import tifffile

        data = tifffile.imread(tif)
        t0 = time.perf_counter()
        Image.fromarray(data).save(root / "image.tmp.png", format="PNG")
        del data
        (root / "image.tmp.png").rename(path)
        tif.unlink()
        print(f"built {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--size", type=int, default=14_000)
    ap.add_argument("--small", type=int, default=7_070, help="side of the PNG the decoders read")
    ap.add_argument("--pypng-rows", type=int, default=300)
    args = ap.parse_args()
    build(args.workdir, args.size, f"png-{args.size}")
    small = build(args.workdir, args.small, f"png-{args.small}")

    t0 = time.perf_counter()
    with Image.open(small) as im:  # under Pillow's own limit (179 Mpx)
        whole = np.asarray(im)
    pillow = time.perf_counter() - t0
    h, w = whole.shape[:2]

    import png

    t0 = time.perf_counter()
    rows = png.Reader(filename=str(small)).asDirect()[2]
    n = sum(1 for _ in itertools.islice(rows, args.pypng_rows))
    pypng = time.perf_counter() - t0

    with bands.png_strips(str(small)) as strips:  # the kernel compiled (or loaded) first
        strips.read(0, 1)
    t0 = time.perf_counter()
    with bands.png_strips(str(small)) as strips:
        got = list(bands.read_rows(strips, 0, h, False, (255, 255, 255)))
    own = time.perf_counter() - t0
    for top, rgb, _ in got:
        if not np.array_equal(rgb, whole[top:top + len(rgb)]):
            raise SystemExit(f"rows from {top} differ from Pillow's decode")
    print(f"{w}x{h} PNG ({small.stat().st_size / 2**20:.0f} MiB):")
    print(f"  Pillow whole decode   {pillow:6.1f} s  {h * w / pillow / 1e6:5.1f} Mpx/s")
    print(f"  pypng rows ({n} rows) {pypng:6.1f} s  {n * w / pypng / 1e6:5.1f} Mpx/s")
    print(f"  streamq strips        {own:6.1f} s  {h * w / own / 1e6:5.1f} Mpx/s "
          f"(kernel {png_rows.__name__}._unfilter)")


if __name__ == "__main__":
    main()
