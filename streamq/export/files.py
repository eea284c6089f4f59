"""Export: rebuild every image from its labels and the palette, as files under OUT.

Files mirror the source tree (``Person/Person_0001.jpg`` -> ``OUT/Person/Person_0001.png``):
a palette PNG (mode ``P``) for K <= 256, else RGB; ``--format jpeg|webp`` writes RGB;
``--dither`` re-quantizes the stored pixels to the palette with Floyd-Steinberg error
diffusion (Pillow's, nearest colour in RGB). A palette with alpha (a collection with
transparent images, :mod:`streamq.fit.alpha`) gives palette PNGs with a ``tRNS`` chunk (the
alpha of each entry up to the last transparent one), RGBA PNG and WebP files, and JPEG files
composited on the ingest's ``background``. Output paths never leave OUT, whatever the
stored names contain; a byte of a source name that is not UTF-8 is written ``%HH``
(:func:`streamq.names.output_name`), so every output name is valid text. Names that some file
system would take for one file (``A.jpg`` and ``a.JPG``, ``photo.jpg`` and ``photo.png``, one
accented name composed and decomposed) get distinct names, decided over the whole collection
(:func:`output_names`). Each file is written under a temporary name and renamed (on an object
store such as ``s3://bucket/out``: one PUT per file); a task then makes its files durable and
records them with their CRC-32 and the labels they were made from (``OUT/.streamq-records``),
and a rerun skips only files a record of the current labels vouches for. Every task checks,
after each read of labels and before its record, that the store's labels are still those the
export started with (readers take no lock: a quantize or refit may run beside it), else stops
the export in one line (:class:`~streamq.errors.LabelsChangedError`). A write that fails for a
reason outside the image (a full disk...) is retried, then stops the export in one line
(:mod:`streamq.faults`).
``OUT/.streamq-export.json`` records what made the files; a different export into the same
OUT is refused unless ``overwrite``.
The compact form -- labels + palette + image table as arrays, no image files -- is
``export(..., zarr=True)`` (:mod:`streamq.export.zarr`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamq._version import __version__
from streamq.config import StreamQConfig, parse_config
from streamq.console import timer
from streamq.durable import sync_all, sync_files
from streamq.errors import ConfigError, LabelsChangedError, StoreExistsError, StreamQError
from streamq.export.common import MANIFEST, check_out, labels_changed_message, listing
from streamq.faults import retrying
from streamq.fs import Location, check_access, join, location, storage_errors, write_atomic
from streamq.lock import check_writer
from streamq.names import output_name
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks
from streamq.store import PIXELS, Collection, Store, open_array, store_location
from streamq.store.names import labels_path, per_image_palette
from streamq.store.results import labels_identity, load_fit, read_identity, ready_labels
from streamq.store.selection import parse_ids, select_images

if TYPE_CHECKING:
    from streamq.export.zarr import ZarrExportSummary

__all__ = ["ExportSummary", "export", "labels_identity", "name_key", "output_names",
           "recorded_files", "safe_output_path"]

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
TMP_DIR = ".streamq-tmp-files"  # half-written files live here until renamed; emptied at every start
RECORDS_DIR = ".streamq-records"  # completion records: files written, their CRC-32, the palette
RECORDS_INDEX = "index.json"  # the records of a finished run, merged
PIXELS_PER_TASK = 16_000_000
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_VERSION_MARK = "?versionId="  # s3fs reads it as an object version: never part of a name


@dataclass
class ExportSummary:
    out: str
    format: str
    n_images: int
    n_written: int
    n_existing: int
    timings: dict[str, float] = field(default_factory=dict)
    #: exported images whose file is not named after them, as their names clash with others'
    #: (``{"id", "path", "file"}``); the manifest lists those of the whole collection
    renamed: list[dict[str, Any]] = field(default_factory=list)
    manifest: str = ""
    #: selected images over ``ingest.max_pixels`` (read in bands at ingest): not written, as
    #: an image file is encoded whole; ``--zarr`` exports them chunk by chunk
    too_large: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        renamed = (f"; {len(self.renamed)} renamed as their names clash with others', listed in "
                   f"{self.manifest}" if self.renamed else "")
        large = (f"; {len(self.too_large)} image(s) over max_pixels not written (an image "
                 "file is encoded whole): export them with --zarr" if self.too_large else "")
        return (f"exported {self.n_images} images as {self.format} to {self.out} "
                f"({self.n_written} written, {self.n_existing} already there{renamed}{large})")


def safe_output_path(out: str, rel: str, ext: str, fallback: str) -> str:
    """``out/rel`` with its extension replaced, guaranteed to stay inside ``out``.

    Absolute paths lose their root, ``..`` and ``.`` components become ``_`` or vanish,
    control characters become ``_``; if the result still escapes (a symlink), ``fallback``
    (a name made from the image id) is used under ``out/_unsafe``. ``out`` may be a URL
    (``s3://bucket/out``): object keys have no symlinks, so the cleaned parts stay under it.
    """
    return _inside(out, _clean_parts(rel, ext, fallback), fallback + ext)


def _clean_parts(rel: str, ext: str, fallback: str) -> list[str]:
    """The components of ``rel`` made safe (see :func:`safe_output_path`), extension replaced."""
    parts = []
    for p in re.split(r"[/\\]+", rel):
        if p in ("", "."):
            continue
        p = "_" if p == ".." else _BAD_CHARS.sub("_", p)
        parts.append(p.replace(_VERSION_MARK, "_versionId="))
    if not parts:
        parts = [fallback]
    stem, _ = os.path.splitext(parts[-1])
    parts[-1] = (stem or fallback) + ext
    return parts


def _inside(out: str, parts: Sequence[str], fallback: str) -> str:
    """``out/parts...``; locally ``out/_unsafe/fallback`` when a symlink would lead outside."""
    if "://" in out:
        return join(out, *parts)
    root = os.path.realpath(out)
    path = os.path.join(root, *parts)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root or real == root:
        return os.path.join(root, "_unsafe", fallback)
    return path


def name_key(name: str) -> str:
    """``name`` as file systems may compare it: case-folded and Unicode NFC-normalised. Two
    names with one key are one file on a case-insensitive (Windows, macOS) or normalising
    (macOS) file system."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def output_names(paths: Sequence[str], ext: str) -> tuple[list[str], dict[int, str]]:
    """The file name (relative to OUT, ``/``-separated) of every image of a collection, and
    ``{id: name}`` of those not named after their image.

    An image's name is its stored path made safe (:func:`safe_output_path`) with ``ext``.
    Names are compared by :func:`name_key`; where several images share one (``A.jpg``,
    ``a.JPG``; ``photo.jpg``, ``photo.png``), or a name is also a folder of other images,
    the image with the lowest id keeps it and the others get the first free
    ``stem~2``, ``stem~3``, ... in id order (never a name another image has). It is decided
    over the whole collection, so any selection, rerun or resume gives an image one name.
    """
    natural = ["/".join(_clean_parts(p, ext, f"{i:08d}")) for i, p in enumerate(paths)]
    keys = [name_key(n) for n in natural]
    folders = {k[:j] for k in keys for j, c in enumerate(k) if c == "/"}
    taken: set[str] = set()
    clashes = []
    for i, key in enumerate(keys):
        if key in taken or key in folders:
            clashes.append(i)
        else:
            taken.add(key)
    names = list(natural)
    for i in clashes:
        folder, _, base = natural[i].rpartition("/")
        stem, suffix = os.path.splitext(base)
        n = 2
        while True:
            name = f"{folder}/{stem}~{n}{suffix}" if folder else f"{stem}~{n}{suffix}"
            key = name_key(name)
            if key not in taken and key not in folders:
                break
            n += 1
        taken.add(key)
        names[i] = name
    return names, {i: names[i] for i in clashes}


def _encode(img: Any, fmt: str, options: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt.upper() if fmt != "jpeg" else "JPEG", **options)
    return buf.getvalue()


def _contiguous_runs(images: list[tuple[int, str, int, int, int]]
                     ) -> Iterator[list[tuple[int, str, int, int, int]]]:
    """Split ``(id, path, offset, h, w)`` rows into runs whose pixels lie back to back."""
    run: list[tuple[int, str, int, int, int]] = []
    for item in images:
        if run and item[2] != run[-1][2] + run[-1][3] * run[-1][4]:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _file_ok(path: str, expect: list[int] | None) -> bool:
    """Whether local file ``path`` is the one its record describes (``[crc32, size]``)."""
    if expect is None:
        return False
    try:
        if os.path.getsize(path) != expect[1]:
            return False
        with open(path, "rb") as fh:
            return zlib.crc32(fh.read()) == expect[0]
    except OSError:
        return False


def _read_rows(arr: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of ``arr`` (read again when a transient fault is retried)."""
    return np.asarray(arr[start:stop])


def _export_task(args: dict[str, Any]) -> tuple[int, int]:
    out: Location = args["out"]
    with storage_errors(out):
        return _export_images(args, None if out.is_local else out.filesystem())


def _export_images(args: dict[str, Any], fs: Any) -> tuple[int, int]:
    """Write one task's images; return ``(written, found complete)``.

    A file is complete when a record of this export names it with its checksum and the
    labels it was made from (locally the file is read back to compare; on an object store the
    client compared sizes in its listing and sent only the others). After each read of labels
    the store's labels are checked to be those the export started with; after the last file,
    the files are made durable, the labels checked once more, and the task's record written.
    """
    from PIL import Image

    fmt = args["format"]
    k_img = args["per_image"]
    store = args["store"]
    labels_name = labels_path(k_img or None)
    expect = args.get("expect") or {}
    root = args.get("root")
    if fs is not None:  # an object store: the client sent only files without a matching record
        todo = list(args["images"])
    elif root is None:  # no records (a direct call): a file that exists is done
        todo = [item for item in args["images"] if not os.path.exists(item[1])]
    else:
        todo = [item for item in args["images"]
                if not _file_ok(item[1], expect.get(_rel(root, item[1])))]
    existing = len(args["images"]) - len(todo)
    if not todo:
        return 0, existing
    # One read per run of neighbouring images, not one per image: a small image would
    # otherwise decode a whole inner chunk of the shard for a few of its pixels.
    retry = args.get("retry")
    name = PIXELS if args["dither"] else labels_name
    alpha = None if args.get("alpha") is None else np.asarray(args["alpha"], dtype=np.uint8)
    trns = _trns(alpha) if fmt == "png" else {}
    written: dict[str, list[int]] = {}  # relative name -> [crc32, size]
    paths: list[str] = []
    try:
        try:
            source = open_array(store, name)
            palettes = open_array(store, per_image_palette(k_img)) if k_img else None
        except Exception:
            _check_labels(args)  # replaced meanwhile: say so rather than what failed
            raise
        for run in _contiguous_runs(todo):
            start, stop = run[0][2], run[-1][2] + run[-1][3] * run[-1][4]
            try:
                block = retrying(functools.partial(_read_rows, source, start, stop), "read",
                                 store.join(name).url, retry)
                run_palettes = (np.asarray(palettes[run[0][0]:run[-1][0] + 1])
                                if palettes is not None else None)
            except Exception:
                _check_labels(args)
                raise
            _check_labels(args)  # what was read is what the export started with
            for image_id, path, off, h, w in run:
                palette = np.asarray(run_palettes[image_id - run[0][0]] if run_palettes is not None
                                     else args["palette"], dtype=np.uint8)
                k = len(palette)
                flat_pal = palette.reshape(-1).tolist()
                data = block[off - start:off - start + h * w]
                if args["dither"]:
                    pal_img = Image.new("P", (1, 1))
                    pal_img.putpalette(flat_pal + flat_pal[-3:] * (256 - k))
                    img = Image.fromarray(data.reshape(h, w, 3)).quantize(
                        palette=pal_img, dither=Image.Dither.FLOYDSTEINBERG)
                    if fmt != "png":
                        img = img.convert("RGB")
                elif fmt == "png" and k <= 256:
                    img = Image.fromarray(data.reshape(h, w).astype(np.uint8, copy=False))  # L ...
                    img.putpalette(flat_pal)  # ... becomes P with the palette
                elif alpha is not None:
                    img = _with_alpha(palette, alpha, data.reshape(h, w), fmt, args["background"])
                else:
                    img = Image.fromarray(palette[data.reshape(h, w)])
                encoded = _encode(img, fmt, {**args["options"], **(trns if img.mode == "P" else {})})
                check_writer()  # under `streamq run`: the store's lock must still be this job's
                paths.append(path)
                if fs is None:
                    retrying(functools.partial(write_atomic, path, encoded,  # made durable below
                                               sync=False, tmp_dir=args["tmp_dir"]),
                             "write", path, retry, write=True)
                else:
                    fs.pipe_file(path, encoded)  # one PUT: complete or absent
                if root is not None:
                    written[_rel(root, path)] = [zlib.crc32(encoded), len(encoded)]
        if root is not None:
            if fs is None:
                retrying(lambda: sync_all(paths, up_to=root), "write", root, retry, write=True)
            _check_labels(args)  # last: no record for files made from labels that changed
            _write_file_record(args, written)
    except LabelsChangedError:
        _remove_written(args["out"], paths)  # not counted as done: a rerun writes them again
        raise
    return len(paths), existing


def _trns(alpha: np.ndarray | None) -> dict[str, Any]:
    """Pillow's option for a palette PNG's ``tRNS`` chunk: the alpha of every entry up to the
    last one below 255 (none when every entry is opaque)."""
    if alpha is None or not (alpha < 255).any():
        return {}
    last = int(np.flatnonzero(alpha < 255)[-1])
    return {"transparency": bytes(alpha[:last + 1].tolist())}


def _with_alpha(palette: np.ndarray, alpha: np.ndarray, labels: np.ndarray, fmt: str,
                background: Sequence[int]) -> Any:
    """An image of straight colours ``palette`` with ``alpha``: RGBA, or for JPEG the
    colours composited on ``background`` (as ingest's ``alpha: flatten``)."""
    from PIL import Image

    rgba = np.concatenate([palette, alpha[:, None]], axis=1)[labels]
    if fmt == "jpeg":
        c, a = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
        bg = np.asarray(background, dtype=np.uint32)
        return Image.fromarray(((c * a + bg * (255 - a) + 127) // 255).astype(np.uint8))
    return Image.fromarray(rgba, mode="RGBA")


def _rel(root: str, path: str) -> str:
    """``path`` relative to the export's root folder, ``/``-separated (its record key)."""
    return path[len(root.rstrip("/" + os.sep)) + 1:].replace(os.sep, "/")


def _remove_written(out: Location, paths: list[str]) -> None:
    with contextlib.suppress(OSError, StreamQError):
        out.remove_files(paths)


def _check_labels(args: dict[str, Any]) -> None:
    """Stop the task unless the store's labels (and palette) are still those the export
    started with: a quantize, fit or ingest may run beside it (readers take no lock)."""
    expected = args.get("labels")
    if expected is None:
        return
    if read_identity(args["store"], args["per_image"], not args["dither"]) != expected:
        raise LabelsChangedError(labels_changed_message(args["store"].url))


def _write_file_record(args: dict[str, Any], written: dict[str, list[int]]) -> None:
    """The task's completion record: the files it wrote, their checksums, the palette."""
    if not written:
        return
    import uuid

    first = min(written)
    name = f"{zlib.crc32(first.encode()):08x}-{uuid.uuid4().hex[:12]}.json"
    rec = args["out"].join(RECORDS_DIR, name)
    data = json.dumps({"fit": args["fit"], "files": written}, sort_keys=True).encode()
    check_writer()
    retrying(lambda: rec.write_bytes(data), "write", rec.url, args.get("retry"), write=True)
    if args["out"].is_local:  # its name in the records folder, and that folder's in OUT
        sync_files([rec.url], up_to=args["out"].url)


def export(store: str | Location, out: str | Location, *, zarr: bool = False,
           format: str | None = None, dither: bool = False, labels: list[str] | None = None,
           ids: str | list[int] | None = None, per_image: int | Sequence[int] | None = None,
           png_level: int = 1, quality: int = 95, overwrite: bool = False,
           config: StreamQConfig | dict[str, Any] | None = None, scheduler: str | None = None,
           progress: bool | None = None, storage_options: dict[str, Any] | None = None
           ) -> ExportSummary | ZarrExportSummary:
    """Write the quantized images of ``store`` under ``out`` (see the module docstring).

    ``store`` and ``out`` are local paths or URLs (``s3://bucket/out``); ``storage_options``
    (default: ``config``'s, else the store's) reach both. ``format`` is ``png`` (default),
    ``jpeg`` or ``webp``. With ``zarr=True``, ``out`` becomes a Zarr store of labels,
    palettes and the image table instead (:func:`streamq.export.zarr.export_zarr`; there
    ``per_image`` may list several K).
    """
    if zarr:
        if format is not None or dither:
            raise ConfigError("--format and --dither apply to image files; --zarr writes the "
                              "labels and palettes themselves")
        from streamq.export.zarr import export_zarr

        return export_zarr(store, out, labels=labels, ids=ids, per_image=per_image,
                           overwrite=overwrite, config=config, scheduler=scheduler,
                           progress=progress, storage_options=storage_options)
    format = format or "png"
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    if per_image is not None and not isinstance(per_image, int):
        ks = list(per_image)
        if len(ks) != 1:
            raise ConfigError(f"--per-image {','.join(map(str, ks))}: image files are exported "
                              "for one K at a time (several K in one output need --zarr)")
        per_image = int(ks[0])
    cfg = parse_config(config).replace(**{"dask.scheduler": scheduler})
    st = Store.open(store_location(store, storage_options, cfg.storage_options))
    coll = Collection(st)
    fit_fp = ready_labels(st, per_image)
    identity = labels_identity(st, per_image, labels=not dither)  # re-checked by every task
    alpha = None
    if per_image is None:
        fitted = load_fit(st.location)
        palette = fitted.palette.tolist()
        alpha = None if fitted.alpha is None else fitted.alpha.tolist()
    else:
        palette = None
    if alpha is not None and dither:
        raise ConfigError("--dither is not available for a palette with alpha (this store's "
                          "images have transparent pixels)")
    k = len(palette) if palette is not None else per_image
    if dither and k is not None and k > 256:
        raise ConfigError(f"--dither needs a palette of at most 256 colours, this one has {k}")
    chosen = select_images(coll, labels, parse_ids(ids, len(coll)))
    chosen, too_large = _without_large(st, coll, chosen)
    out_loc = location(out, storage_options if storage_options is not None
                       else (cfg.storage_options or st.location.options))
    check_access(out_loc)
    out = out_loc.url
    manifest: dict[str, Any]
    manifest = {"store": st.path, "fit_fingerprint": fit_fp, "per_image": per_image,
                "format": format, "dither": dither,
                "png_level": png_level, "quality": quality, "streamq": __version__}
    if alpha is not None:  # only then: the manifest of an opaque collection is unchanged
        manifest["alpha"] = True
    given = st.section("fit").get("palette_source") if per_image is None else None
    if given:  # a palette given to quantize --palette: where it came from
        manifest["palette_source"] = given
    check_out(out_loc, st)
    ext = FORMATS[format]
    options = {"compress_level": png_level} if format == "png" else {"quality": quality}
    # any source name makes a valid name: see streamq.names.output_name
    names, clashes = output_names([output_name(p) for p in coll.paths], ext)
    paths = [_inside(out, names[i].split("/"), f"{i:08d}{ext}") for i in chosen]
    manifest["renamed"] = [{"id": i, "path": coll.paths[i], "file": name}
                           for i, name in sorted(clashes.items())]
    renamed = [{"id": i, "path": coll.paths[i], "file": clashes[i]} for i in chosen
               if i in clashes]
    for r in renamed:
        log.debug("image %d (%s) is exported as %s: its name clashes with another's",
                  r["id"], r["path"], r["file"])
    retrying(lambda: _check_manifest(out_loc, manifest, overwrite, paths), "write", out,
             cfg.retry, write=True)
    timings: dict[str, float] = {}
    path_of = dict(zip(chosen, paths, strict=True))
    root = os.path.realpath(out) if out_loc.is_local else out.rstrip("/")  # where paths start
    recorded = recorded_files(out_loc, fit_fp)
    # A file is done when a record of these labels names it with its checksum: locally each
    # task reads it back to compare; on an object store one listing of sizes does it here.
    todo = list(chosen)
    if not out_loc.is_local:
        sizes = _listing_sizes(out_loc)
        todo = [i for i in chosen if sizes.get(path_of[i]) != (
            recorded.get(_rel(root, path_of[i])) or (None, -1))[1]]
    tasks = [[(i, path_of[i], int(coll.offsets[i]), int(coll.heights[i]), int(coll.widths[i]))
              for i in group] for group in coll.groups_by_pixels(todo, PIXELS_PER_TASK)]
    tmp_dir = os.path.join(out, TMP_DIR) if out_loc.is_local else None  # S3: one PUT per file
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a killed run
        os.makedirs(tmp_dir)
    common = {"store": st.location, "out": out_loc, "palette": palette, "per_image": per_image,
              "format": format, "dither": dither, "options": options, "tmp_dir": tmp_dir,
              "retry": cfg.retry, "labels": identity, "fit": fit_fp, "root": root,
              "alpha": alpha,
              "background": st.section("ingest").get("settings", {}).get("background",
                                                                         [255, 255, 255])}
    written, existing = 0, len(chosen) - len(todo)

    def add(task: Task, result: tuple[int, int]) -> None:
        nonlocal written, existing
        written += result[0]
        existing += result[1]

    with timer("exporting", timings), runner(cfg.dask) as run:
        run.check_paths(st.path, out)
        run_tasks(run, [Task(_export_task, {**common, "images": t, "expect": {
                        r: recorded[r] for r in (_rel(root, item[1]) for item in t)
                        if r in recorded}}, len(t)) for t in tasks],
                  "exporting", "image", progress, on_result=add, total=len(chosen))
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    # The last check, before the summary: every record of this run names these labels.
    if read_identity(st.location, per_image, not dither) != identity:
        raise LabelsChangedError(labels_changed_message(st.path))
    retrying(lambda: _merge_records(out_loc, fit_fp), "write", out, cfg.retry, write=True)
    summary = ExportSummary(out=out, format=format, n_images=len(chosen), n_written=written,
                            n_existing=existing, timings=timings, renamed=renamed,
                            manifest=out_loc.join(MANIFEST).url, too_large=too_large)
    log.info("%s", summary)
    return summary


def _without_large(st: Store, coll: Collection, chosen: list[int]) -> tuple[list[int], list[int]]:
    """``(chosen images to write, those over the ingest's max_pixels)``: an image that large
    was read in bands (:mod:`streamq.ingest.bands`) and is never encoded whole."""
    limit = st.section("ingest").get("settings", {}).get("max_pixels")
    if limit is None:
        return chosen, []
    large = [i for i in chosen if int(coll.heights[i]) * int(coll.widths[i]) > int(limit)]
    for i in large:
        log.warning("image %d (%s, %dx%d) is over max_pixels=%d: not written as a file (it "
                    "would be encoded whole); export it with --zarr", i, coll.paths[i],
                    int(coll.widths[i]), int(coll.heights[i]), int(limit))
    skip = set(large)
    return [i for i in chosen if i not in skip], large


def recorded_files(out: str | Location, fit: str | None = None) -> dict[str, list[int]]:
    """``{file relative to OUT: [crc32, size]}`` of every file the records of the export at
    ``out`` vouch for (only those made with the palette of fingerprint ``fit``, when given:
    labels are a function of it)."""
    out_loc = out if isinstance(out, Location) else location(out)
    files: dict[str, list[int]] = {}
    for rec in _record_files(out_loc):
        try:
            data = json.loads(rec.read_bytes())
        except (OSError, ValueError):
            continue  # torn or gone: its files are written again
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            continue
        if fit is None or data.get("fit") == fit:
            files.update(data["files"])
    return files


def _record_files(out_loc: Location) -> list[Location]:
    folder = out_loc.join(RECORDS_DIR)
    return [folder.join(n) for n in folder.listdir() if n.endswith(".json")]


def _merge_records(out_loc: Location, fit: str) -> None:
    """Merge the records of these labels into one file and remove the others (written first,
    so a kill between leaves duplicates, never a file without its record)."""
    files = _record_files(out_loc)
    if [f.url.rsplit("/", 1)[-1] for f in files] in ([], [RECORDS_INDEX]):
        return
    merged = recorded_files(out_loc, fit)
    index = out_loc.join(RECORDS_DIR, RECORDS_INDEX)
    check_writer()
    index.write_bytes(json.dumps({"fit": fit, "files": merged}, sort_keys=True).encode())
    if out_loc.is_local:
        sync_files([index.url], up_to=out_loc.url)
    out_loc.remove_files([f.url for f in files if f.url != index.url])


def _listing_sizes(out_loc: Location) -> dict[str, int]:
    """``{URL: size}`` of every object under ``out_loc`` (one paginated listing)."""
    with storage_errors(out_loc):
        fs = out_loc.filesystem()
        fs.invalidate_cache(out_loc.url)
        try:
            found = fs.find(out_loc.url, detail=True)
        except FileNotFoundError:
            return {}
        return {f"{out_loc.scheme}://{p}": int(info.get("size") or 0) for p, info in found.items()}


def _check_manifest(out_loc: Location, manifest: dict[str, Any], overwrite: bool,
                    planned: list[str]) -> None:
    """Refuse an export into a folder holding a different one, unless ``overwrite``.

    With ``overwrite``, only the files this export is about to write are removed (never
    anything else in the folder), *before* the new manifest is written: a rerun after a kill
    then skips only files that this export wrote.
    """
    out = out_loc.url
    man = out_loc.join(MANIFEST)
    old: dict[str, Any] | None = None
    if man.exists():
        try:
            old = json.loads(man.read_bytes())
        except (OSError, ValueError):
            old = {}
    elif {n for n in out_loc.listdir() if not n.startswith(".streamq-")} and not overwrite:
        raise StoreExistsError(f"{out} is not empty and holds no streamq export; choose another "
                               "folder or pass --overwrite")
    if old is not None:
        old.setdefault("renamed", [])  # before names were compared case-folded: none listed
    same = old is not None and {k: old.get(k) for k in manifest if k != "streamq"} == \
        {k: v for k, v in manifest.items() if k != "streamq"}
    if old is not None and not same and not overwrite:
        settings = {k: v for k, v in manifest.items() if k not in ("streamq", "renamed")}
        if {k: old.get(k) for k in settings} == settings:
            raise StoreExistsError(
                f"{out} holds this export with other names for the images whose names clash "
                "(made by an older streamq, which compared names otherwise); pass --overwrite "
                "to redo it")
        raise StoreExistsError(
            f"{out} holds an export made differently ({old.get('format')}, palette "
            f"{old.get('fit_fingerprint')}); pass --overwrite to replace it")
    if overwrite:  # the records first: a file without its record is written again
        out_loc.remove_files([f.url for f in _record_files(out_loc)])
        _remove_existing(out_loc, planned)
    if out_loc.is_local:
        os.makedirs(out, exist_ok=True)
    check_writer()
    man.write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode())


def _remove_existing(out_loc: Location, planned: list[str]) -> None:
    """Remove those of the ``planned`` files that exist, each by its name (on S3: one listing,
    then DeleteObjects with those keys)."""
    if out_loc.is_local:
        out_loc.remove_files(planned)  # missing ones are skipped
        return
    have = listing(out_loc)
    out_loc.remove_files(p for p in planned if p in have)


