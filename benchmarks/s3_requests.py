"""Requests an S3 store costs: an ingest (optionally the whole pipeline) into ``s3://bucket/x.zarr``
on a local moto server, counted from the server's request log by method and by kind of key.

The count, not the wall time, is what this measures: on a real bucket every request is a
round trip (tens of ms), so the metadata reads a run repeats are its fixed cost. Run::

    python benchmarks/s3_requests.py --images 8 [--pipeline] [--scheduler sync]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kind(path: str) -> str:
    key = path.split("?")[0]
    if key.endswith("/x.zarr/zarr.json"):
        return "root zarr.json"
    if key.endswith("zarr.json"):
        return "other zarr.json"
    if "list-type" in path or key.rstrip("/") == "/bucket":
        return "listing"
    return "data and records"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8, help="images of the generated collection")
    ap.add_argument("--pipeline", action="store_true", help="also fit, quantize and export")
    ap.add_argument("--scheduler", default="sync", help="the stages' Dask scheduler")
    ap.add_argument("--keys", type=int, default=0, metavar="N",
                    help="also list the N keys requested most often (method, key)")
    args = ap.parse_args()

    import boto3

    import streamq
    from streamq.examples import make_collection

    work = Path(tempfile.mkdtemp(prefix="s3-requests-"))
    make_collection(work / "src", args.images, seed=1, min_side=30, max_side=160)
    port = _free_port()
    log_path = work / "moto.log"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                   str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k",
                     aws_secret_access_key="s", region_name="us-east-1").create_bucket(Bucket="bucket")
        opts = {"endpoint_url": endpoint, "key": "k", "secret": "s",
                "client_kwargs": {"region_name": "us-east-1"}}
        start = log_path.stat().st_size
        kw = {"storage_options": opts, "progress": False, "scheduler": args.scheduler}
        t0 = time.perf_counter()
        streamq.ingest(str(work / "src"), "s3://bucket/x.zarr", chunk_pixels=65_536, **kw)
        walls = {"ingest": time.perf_counter() - t0}
        if args.pipeline:
            t0 = time.perf_counter()
            streamq.fit("s3://bucket/x.zarr", colors=8, seed=3, **kw)
            streamq.quantize("s3://bucket/x.zarr", **kw)
            streamq.export("s3://bucket/x.zarr", "s3://bucket/out", **kw)
            walls["fit, quantize, export"] = time.perf_counter() - t0
        time.sleep(0.5)  # the server's last log lines
    finally:
        server.terminate()
        server.wait(10)
    text = log_path.read_bytes()[start:].decode(errors="replace")
    requests = re.findall(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP', text)
    print(f"{args.images} images, scheduler {args.scheduler}, "
          f"{'pipeline' if args.pipeline else 'ingest'}: {len(requests)} requests; wall "
          + ", ".join(f"{k} {v:.2f} s" for k, v in walls.items()))
    print("  by method:", dict(collections.Counter(m for m, _ in requests)))
    for (method, kind), n in collections.Counter((m, _kind(p)) for m, p in requests).most_common():
        print(f"  {n:5d} {method} {kind}")
    if args.keys:
        print(f"  the {args.keys} keys requested most often:")
        for (method, key), n in collections.Counter(
                (m, p.split("?")[0]) for m, p in requests).most_common(args.keys):
            print(f"  {n:5d} {method} {key}")


if __name__ == "__main__":
    main()
