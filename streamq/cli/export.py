"""``streamq export``: the quantized images as files, or as a stand-alone Zarr store."""

from __future__ import annotations

from typing import Any

import click

from streamq.cli.common import echo_result, handle_errors, progress_flag
from streamq.cli.options import (
    config_opt,
    default_of,
    json_opt,
    overwrite_opt,
    progress_opt,
    scheduler_opt,
    shown_default,
    storage_opt,
    storage_overrides,
)


@click.command("export", short_help="Write the quantized images as image files (or Zarr arrays).")
@click.argument("store", required=False)
@click.argument("out", required=False)
@config_opt
@scheduler_opt
@click.option("--zarr", "as_zarr", is_flag=True, default=None,
              help="Write OUT as a Zarr v3 store of labels + palette + image table (no image "
                   "files); layout in docs/store-format.md.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default=None,
              help=f"File format [default: {default_of('export.format')}, a palette PNG when "
                   "K <= 256].")
@click.option("--dither", is_flag=True, default=None, help="Floyd-Steinberg dithering.")
@click.option("--label", "labels", multiple=True, help="Only images with this label (repeatable).")
@click.option("--ids", default=None, help="Only these image ids, e.g. 0,5,10-20.")
@click.option("--png-level", type=int, default=None,
              help="zlib level of PNG files and of the tiled TIFFs of images over max_pixels, "
                   f"0..9 {shown_default('export.png_level')}.")
@click.option("--per-image", "per_image", default=None, metavar="K",
              help="Export the per-image palettes of this K instead of the shared palette "
                   "(--zarr: also a list such as 2,6,30, one group per K). Default for a store "
                   "with no shared palette but a per-image --quality fit: that fit's K group.")
@storage_opt
@overwrite_opt
@progress_opt
@json_opt
@click.pass_context
@handle_errors
def export_cmd(ctx: click.Context, store: str | None, out: str | None, config_path: str | None,
               scheduler: str | None, as_zarr: bool | None, fmt: str | None, dither: bool | None,
               labels: tuple[str, ...], ids: str | None, png_level: int | None,
               per_image: str | None, storage_options: tuple[str, ...], overwrite: bool,
               progress: bool | None, as_json: bool) -> None:
    """Rebuild the quantized images of STORE as files under OUT, mirroring the source tree.

    OUT is a folder or a URL such as s3://bucket/faces-64 (one object per image). Names
    that a case-insensitive file system would take for one file (A.jpg, a.JPG) are told
    apart as a~2.png, ...: the summary counts them and OUT/.streamq-export.json lists them.
    An image over the ingest's max_pixels (read in bands) is written as a tiled BigTIFF,
    name.tif, a row of tiles at a time (not with --dither: listed as not written).

    With --zarr, OUT (e.g. faces-labels.zarr) becomes a stand-alone Zarr store of the
    palette, the labels of the selected images packed back to back, and the image table
    (id, path, label, height, width, offset, MSE/PSNR); --per-image 2,6,30 gives one group
    per K. Resumable; a rerun of a finished export does nothing. With plain zarr + numpy,
    image j is:

    \b
      palette[labels[offset[j] : offset[j] + height[j] * width[j]]]
          .reshape(height[j], width[j], 3)
    """
    from streamq.config import load_config
    from streamq.export import export

    cfg = load_config(config_path, **{"store": store, "dask.scheduler": scheduler, "export.out": out,
                                      "export.zarr": as_zarr, "export.format": fmt,
                                      "export.dither": dither, "export.png_level": png_level,
                                      "export.per_image": per_image},
                      **storage_overrides(storage_options))
    e = cfg.export
    if cfg.store is None or e.out is None:
        raise click.UsageError("pass STORE and OUT (or set keys 'store' and 'export.out')")
    common: dict[str, Any] = dict(labels=list(labels) or None, ids=ids, per_image=e.per_image,
                                  overwrite=overwrite, config=cfg,
                                  progress=progress_flag(ctx, progress))
    if e.zarr:
        if fmt is not None or dither or png_level is not None:
            raise click.UsageError("--format, --dither and --png-level are for image files, "
                                   "not --zarr")
        summary: Any = export(cfg.store, e.out, zarr=True, **common)
    else:
        summary = export(cfg.store, e.out, format=e.format, dither=e.dither,
                         png_level=e.png_level, quality=e.quality, **common)
    echo_result(summary, as_json)
