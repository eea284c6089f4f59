"""Ingest throughput from a bucket vs from a local folder, on the same Dask workers.

Builds (once, cached in ``--workdir``) an LFW-shaped collection of real-photo JPEG crops
(:func:`streamq.examples.make_collection`), starts moto's S3 server on 127.0.0.1 (or uses
``--endpoint``), uploads the same files under ``s3://BUCKET/photos/``, then measures, side by
side and in images/s and Mpx/s (median of ``--repeats`` runs), on one running local Dask
cluster (streamq's own runner; its workers warmed by one untimed ingest of each kind):

(a) ``local``   ``streamq.ingest(FOLDER, STORE)``: the workers read the files from disk.
(b) ``bucket``  ``streamq.ingest("s3://BUCKET/photos/", STORE)``: the client lists the
                prefix, the workers read every object themselves (a ranged read for the
                header scan, one GET per image for the write).

The store is local and absent at the start of every run; both stores are compared array by
array after the first repeat (they must be equal). With moto on loopback, (b)/(a) shows the
request overhead of streamq's reads (moto answers each request in Python: a real object store
behaves differently; pass ``--endpoint`` and ``--storage-option`` to measure one). Also
reported: the time of the listing, header scan and write phases of each run (streamq's
own timings).

Run from the repository root::

    python benchmarks/remote_ingest.py --json /tmp/streamq-bench/remote_ingest.json
    python benchmarks/remote_ingest.py --quick          # a smoke run: 60 small images, 1 repeat
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_commit, markdown_table, median, write_results  # noqa: E402

import streamq  # noqa: E402
from streamq.examples import make_collection  # noqa: E402

BUCKET = "streamq-bench"
PREFIX = "photos"


def build(workdir: Path, n_images: int, min_side: int, max_side: int) -> Path:
    """The photo crops, built once per shape and cached."""
    root = workdir / f"remote-{n_images}-{min_side}-{max_side}" / PREFIX
    marker = root.parent / ".complete"
    if not marker.is_file():
        shutil.rmtree(root.parent, ignore_errors=True)
        make_collection(root, n_images, seed=3, min_side=min_side, max_side=max_side)
        marker.write_text(f"{n_images}\n")
    return root


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("moto server did not start") from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def upload(root: Path, opts: dict[str, Any]) -> int:
    """Every file under ``root`` to ``s3://BUCKET/photos/`` (the bucket made if missing)."""
    import boto3

    client = boto3.client("s3", endpoint_url=opts["endpoint_url"], aws_access_key_id=opts["key"],
                          aws_secret_access_key=opts["secret"], region_name="us-east-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    files = [p for p in root.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: client.put_object(
            Bucket=BUCKET, Key=f"{PREFIX}/{p.relative_to(root).as_posix()}", Body=p.read_bytes()),
            files))
    return len(files)


def run_once(src: str, store: Path, address: str, opts: dict[str, Any],
             settings: dict[str, Any]) -> dict[str, Any]:
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    s = streamq.ingest(src, store, scheduler=address, progress=False, storage_options=opts,
                       **settings)
    wall = time.perf_counter() - t0
    return {"seconds": wall, "images": s.n_images, "mpx": s.n_pixels / 1e6,
            "phases": {k: round(v, 3) for k, v in s.timings.items()}}


def same_arrays(a: Path, b: Path) -> bool:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    return all(np.array_equal(ga[n][:], gb[n][:]) for n in
               ("pixels", "images/path", "images/label", "images/offset", "images/height"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="images in the collection")
    ap.add_argument("--min-side", type=int, default=100, help="smallest crop side")
    ap.add_argument("--max-side", type=int, default=250, help="largest crop side (LFW: 250)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per source")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local workers")
    ap.add_argument("--workdir", default="/tmp/streamq-bench", help="collection cache + stores")
    ap.add_argument("--endpoint", default=None,
                    help="an S3 endpoint to use instead of a moto server on loopback")
    ap.add_argument("--key", default="bench", help="access key for --endpoint")
    ap.add_argument("--secret", default="bench-secret", help="secret key for --endpoint")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 60 images of 24-64 px, 1 repeat, 2 workers")
    ap.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    ap.add_argument("--md", metavar="OUT", help="also write a markdown table to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.min_side, args.max_side, args.repeats = 60, 24, 64, 1
        args.workers = min(args.workers, 2)
    os.environ.pop("STREAMQ_SCHEDULER", None)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    root = build(workdir, args.images, args.min_side, args.max_side)
    settings = {"chunk_pixels": 2**20 if args.quick else 2**22}

    from streamq.config import parse_config
    from streamq.scheduler import runner

    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint or stack.enter_context(moto_server(workdir))
        opts = {"endpoint_url": endpoint, "key": args.key, "secret": args.secret,
                "client_kwargs": {"region_name": "us-east-1"}}
        t0 = time.perf_counter()
        n_files = upload(root, opts)
        print(f"uploaded {n_files} files to s3://{BUCKET}/{PREFIX}/ at {endpoint} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        run = stack.enter_context(runner(parse_config({"dask": {"n_workers": args.workers}}).dask))
        address = run.client.scheduler.address
        sources = {"local": str(root), "bucket": f"s3://{BUCKET}/{PREFIX}/"}
        stores = {name: workdir / f"remote-ingest-{name}.zarr" for name in sources}
        warm = root.parent / "warm"  # one untimed ingest of each kind: imports, clients ready
        for name, src in sources.items():
            run_once(src, warm.with_suffix(f".{name}.zarr"), address, opts, settings)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
        equal = None
        for rep in range(args.repeats):
            for name, src in sources.items():
                r = run_once(src, stores[name], address, opts, settings)
                runs[name].append(r)
                print(f"{name:7s} repeat {rep + 1}: {r['seconds']:.2f} s, "
                      f"{r['images'] / r['seconds']:.0f} images/s, "
                      f"{r['mpx'] / r['seconds']:.2f} Mpx/s  {r['phases']}", flush=True)
            if equal is None:
                equal = same_arrays(stores["local"], stores["bucket"])
                print(f"bucket store equals local store: {equal}", flush=True)

    summary = {}
    for name, rs in runs.items():
        secs = median([r["seconds"] for r in rs])
        summary[name] = {"seconds": secs, "images_per_s": rs[0]["images"] / secs,
                         "mpx_per_s": rs[0]["mpx"] / secs}
    ratio = summary["bucket"]["seconds"] / summary["local"]["seconds"]
    result = {"args": vars(args), "n_images": runs["local"][0]["images"],
              "mpx": runs["local"][0]["mpx"], "runs": runs, "summary": summary,
              "bucket_over_local": ratio, "equal": equal, "endpoint": "moto" if not args.endpoint
              else "given", **git_commit()}
    table = markdown_table(
        ["source", "seconds (median)", "images/s", "Mpx/s"],
        [[name, f"{s['seconds']:.2f}", f"{s['images_per_s']:.0f}", f"{s['mpx_per_s']:.2f}"]
         for name, s in summary.items()])
    print(table)
    print(f"bucket / local time: {ratio:.2f}x; stores equal: {equal}")
    write_results(Path(args.json) if args.json else None, result,
                  Path(args.md) if args.md else None, table)
    if not equal:
        raise SystemExit("the bucket store differs from the local store")
    return result


if __name__ == "__main__":
    main()
