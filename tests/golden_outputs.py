"""Digests of what streamq writes, beside ``opaque_reference.py``: the safety net of a refactor
that must leave every output byte for byte as it was.

``tests/data/golden_outputs.json`` was made by the streamq of the commit that added it, with
this file run as a script::

    PYTHONPATH=/path/to/that/checkout python tests/golden_outputs.py tests/data/golden_outputs.json

``tests/test_golden.py`` runs :func:`run_all` again and compares key by key. The digest helpers
are those of ``opaque_reference.py`` (every array of a store, JSON records without what names
the run's inputs; every exported file). Covered here, on small crops of bundled photos, all on
the threads scheduler:

- ``shared``: an opaque collection fitted by ``streamq fit --save-palette`` (the ``.gpl``,
  ``.act`` and ``.json`` files) and by ``fit --per-image`` (the default method), quantized
  (with SSIM), exported as palette PNGs and ``--zarr`` (shared, and per-image: PNGs of one K,
  ``--zarr`` of every K); then image groups (``cluster_images``), ``info``
  (``collection_info`` and its text) and the HTML report, section by section;
- ``per_image_histogram``: ``fit --per-image --method histogram`` on the same collection,
  quantized and exported likewise;
- ``given_palette``: ``quantize --palette`` with a small ``.gpl`` written here, exported;
- ``alpha``: cut-outs with soft transparency (``helpers.write_alpha_collection``) fitted,
  quantized and exported as PNG, WebP and ``--zarr``.

What varies between two runs is left out: times, dates, versions of the libraries, the paths
of the temporary folders (replaced by ``<work>``), and the fingerprints of the inputs (which
cover the source folder's path and the files' mtimes). Figures of the report are digested by
their pixels (a PNG's metadata names the matplotlib version).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from opaque_reference import files_digest, store_digest
from PIL import Image

K = 6  # colours of the shared fits
PER_IMAGE_K = [2, 5]
SCHED = "threads"
#: keys of ``collection_info`` (at any depth) that vary between runs
INFO_VOLATILE = {"store", "source", "seconds", "timings", "finished", "started", "runtime",
                 "fingerprint", "fit_fingerprint", "source_fingerprint"}
#: the given palette of ``quantize --palette``, as a GIMP palette file
GIVEN_GPL = """GIMP Palette
Name: golden
Columns: 5
#
  0   0   0\tblack
255 255 255\twhite
200  60  40\tbrick
 60 120 200\tsky
 90 160  70\tgrass
"""


def format_version(store: Path) -> int:
    """The store format version written in ``store``'s attributes."""
    import zarr

    return zarr.open_group(str(store), mode="r").attrs["streamq"]["format_version"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _scrub(text: str, work: Path) -> str:
    """``text`` without the temporary folder's path, dates and times of day."""
    for p in {str(work), str(work.resolve())}:
        text = text.replace(p, "<work>")
    return re.sub(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?( ?[+-]\d{2}:?\d{2}|Z)?",
                  "<date>", text)


def _png_pixels(match: re.Match[str]) -> str:
    with Image.open(io.BytesIO(base64.b64decode(match.group(1)))) as im:
        return f'src="png:{im.mode}:{im.size[0]}x{im.size[1]}:{_sha(im.tobytes())[:24]}"'


def report_sections(page: str, work: Path) -> dict[str, str]:
    """``{section id: sha256}`` of a report page's sections: figures by their pixels; the run
    facts without the timings and versions tables and the store's format version."""
    page = re.sub(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', _png_pixels, page)
    main = page.split("<main>", 1)[1].rsplit("</main>", 1)[0]
    out = {}
    for sec in re.split(r"(?=<section id=)", main):
        if not sec:
            continue
        sid = re.match(r'<section id="([^"]*)">', sec).group(1)
        if sid == "run":
            sec = re.sub(r'<table class="(timings|versions)">.*?</table>', r"<\1/>", sec)
            sec = re.sub(r"<tr><td>(format version|created with streamq)</td><td>[^<]*</td></tr>",
                         r"<tr><td>\1</td></tr>", sec)
        out[sid] = _sha(_scrub(sec, work).encode())
    return out


def _drop_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in INFO_VOLATILE}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


def groups_digest(res: Any) -> dict[str, Any]:
    """An :class:`~streamq.ImageGroups` without its store path, time and status."""
    summary = {k: v for k, v in res.to_dict().items() if k not in ("store", "seconds", "status")}
    arrays = {name: _sha(np.ascontiguousarray(getattr(res, name)).tobytes())
              for name in ("group", "distance", "centers", "sizes")}
    return {"summary": json.loads(json.dumps(summary, sort_keys=True)), "arrays": arrays,
            "contingency": res.contingency.tolist(), "label_names": list(res.label_names)}


def info_digest(store: Path, work: Path) -> dict[str, Any]:
    """``collection_info`` without what varies, and a digest of its text (``streamq info``)."""
    import streamq
    from streamq.info import format_info

    info = streamq.collection_info(store)
    text = format_info(info)
    text = re.sub(r"\d+(\.\d+)? s\b", "<s>", _scrub(text, work))
    return {"json": json.loads(json.dumps(_drop_volatile(info), sort_keys=True)),
            "text": _sha(text.encode())}


def _cli(*args: str) -> str:
    from click.testing import CliRunner

    from streamq.cli.main import cli

    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _shared(src: Path, work: Path) -> dict[str, Any]:
    import streamq

    store = work / "shared.zarr"
    shutil.copytree(work / "ingested.zarr", store)
    fit = ["fit", str(store), "-k", str(K), "--max-steps", "5", "--batch-size", "512",
           "--n-init", "2", "--scheduler", SCHED, "--no-progress"]
    saved = {}
    for ext in ("gpl", "act", "json"):  # the first fits, the others find it complete
        _cli(*fit, "--save-palette", str(work / f"palette.{ext}"))
        saved[ext] = _sha((work / f"palette.{ext}").read_bytes())
    _fit_per_image(store, "kmeans")
    streamq.quantize(store, scheduler=SCHED, progress=False)
    streamq.export(store, work / "shared-png", scheduler=SCHED, progress=False)
    streamq.export(store, work / "shared-arrays.zarr", zarr=True, scheduler=SCHED,
                   progress=False)
    per_image = _export_per_image(store, work / "per-image-kmeans")
    groups = streamq.cluster_images(store, groups=3, rows_per_chunk=4, pixels_per_task=8000,
                                    scheduler=SCHED, progress=False)
    streamq.report(store, work / "report.html", samples=3, worst=3)
    page = (work / "report.html").read_text(encoding="utf-8")
    return {"store": store_digest(store), "format_version": format_version(store), "saved_palette": saved,
            "png": files_digest(work / "shared-png"),
            "zarr_export": store_digest(work / "shared-arrays.zarr"),
            "groups": groups_digest(groups), "groups_loaded": groups_digest(streamq.load_groups(store)),
            "per_image_kmeans": per_image, "info": info_digest(store, work),
            "report": report_sections(page, work)}


def _fit_per_image(store: Path, method: str) -> None:
    import streamq

    streamq.fit_per_image(store, colors=PER_IMAGE_K, sample=0.7, seed=4, method=method,
                          pixels_per_task=8000, scheduler=SCHED, progress=False)


def _export_per_image(store: Path, out: Path) -> dict[str, Any]:
    """Palette PNGs of the largest per-image K, and every K as ``--zarr``."""
    import streamq

    streamq.export(store, out / "png", per_image=PER_IMAGE_K[-1], scheduler=SCHED, progress=False)
    streamq.export(store, out / "arrays.zarr", zarr=True, per_image=PER_IMAGE_K,
                   scheduler=SCHED, progress=False)
    return {"png": files_digest(out / "png"), "zarr_export": store_digest(out / "arrays.zarr")}


def _per_image_histogram(work: Path) -> dict[str, Any]:
    import streamq

    store = work / "per-image-histogram.zarr"
    shutil.copytree(work / "ingested.zarr", store)
    _fit_per_image(store, "histogram")
    streamq.quantize(store, scheduler=SCHED, progress=False)
    return {"store": store_digest(store), "format_version": format_version(store),
            **_export_per_image(store, work / "per-image-histogram")}


def _given_palette(work: Path) -> dict[str, Any]:
    import streamq

    store = work / "given.zarr"
    shutil.copytree(work / "ingested.zarr", store)
    (work / "given.gpl").write_text(GIVEN_GPL)
    streamq.quantize(store, palette=str(work / "given.gpl"), scheduler=SCHED, progress=False)
    streamq.export(store, work / "given-png", scheduler=SCHED, progress=False)
    streamq.export(store, work / "given-webp", format="webp", scheduler=SCHED, progress=False)
    return {"store": store_digest(store), "format_version": format_version(store), "png": files_digest(work / "given-png"),
            "webp": files_digest(work / "given-webp")}


def _alpha(work: Path) -> dict[str, Any]:
    from helpers import write_alpha_collection

    import streamq

    src, store = work / "alpha-src", work / "alpha.zarr"
    write_alpha_collection(src, n=2)
    streamq.ingest(src, store, chunk_pixels=4096, scheduler=SCHED, progress=False)
    streamq.fit(store, colors=K, n_init=2, scheduler=SCHED)
    streamq.quantize(store, scheduler=SCHED, progress=False)
    streamq.export(store, work / "alpha-png", scheduler=SCHED, progress=False)
    streamq.export(store, work / "alpha-webp", format="webp", scheduler=SCHED, progress=False)
    streamq.export(store, work / "alpha-arrays.zarr", zarr=True, scheduler=SCHED, progress=False)
    return {"store": store_digest(store), "format_version": format_version(store), "png": files_digest(work / "alpha-png"),
            "webp": files_digest(work / "alpha-webp"),
            "zarr_export": store_digest(work / "alpha-arrays.zarr")}


def _ingested(work: Path) -> None:
    """The collection of ``shared``, ``per_image_histogram`` and ``given_palette``, ingested
    as ``work/ingested.zarr``."""
    import streamq
    from streamq.examples import make_collection

    src = work / "src"
    make_collection(src, 8, seed=5, min_side=24, max_side=56,
                    names=["Coffee", "Flower", "Rocket"])
    streamq.ingest(src, work / "ingested.zarr", chunk_pixels=4096, scheduler=SCHED,
                   progress=False)


#: The parts of :func:`run_all`, each independent of the others given the ingested collection.
PARTS: dict[str, Any] = {"shared": lambda work: _shared(work / "src", work),
                         "per_image_histogram": _per_image_histogram,
                         "given_palette": _given_palette,
                         "alpha": _alpha}


def run_part(work, part: str) -> dict[str, Any]:
    """Make what ``part`` needs under ``work``, run its stages, return its digests (the same
    as ``run_all(work)[part]``)."""
    work = Path(work)
    if part != "alpha":
        _ingested(work)
    return PARTS[part](work)


def run_all(work) -> dict[str, Any]:
    """Make the collections under ``work``, run every stage, return every digest."""
    work = Path(work)
    _ingested(work)
    return {part: run(work) for part, run in PARTS.items()}


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        result = run_all(tmp)
    Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {sys.argv[1]}: " + ", ".join(f"{k} ({len(v)} keys)" for k, v in result.items()))
