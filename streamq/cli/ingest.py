"""``streamq example`` and ``streamq ingest``: images in, a store out."""

from __future__ import annotations

import click

from streamq.cli.common import (
    echo_result,
    handle_errors,
    job_options,
    lock_overrides,
    progress_flag,
)
from streamq.cli.options import (
    config_opt,
    scheduler_opt,
    shown_default,
    source_opt,
    source_overrides,
    storage_opt,
    storage_overrides,
)


@click.command("example", short_help="Write an LFW-shaped example folder of photo crops.")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("-n", "--images", "n_images", type=click.IntRange(min=1), default=60,
              show_default=True, help="Number of images.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the crops.")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Fixed square size (LFW: 250); default mixed sizes.")
@handle_errors
def example_cmd(out: str, n_images: int, seed: int, size: int | None) -> None:
    """Write an LFW-shaped example folder cut from photos bundled with installed packages."""
    from streamq.examples import make_collection

    paths = make_collection(out, n_images, seed=seed, size=size)
    names = {p.parent.name for p in paths}
    click.echo(f"wrote {len(paths)} images of {len(names)} names under {out}")


@click.command("ingest", short_help="Decode a folder of images into a Zarr store.")
@click.argument("src", required=False)
@click.argument("store", required=False)
@config_opt
@scheduler_opt
@click.option("--chunk-pixels", type=int, default=None,
              help=f"Pixels per chunk {shown_default('ingest.chunk_pixels')}.")
@click.option("--codec", type=click.Choice(["zstd", "lz4", "none"]), default=None,
              help=f"Compression of pixel chunks {shown_default('ingest.codec')}.")
@click.option("--max-pixels", type=int, default=None,
              help="Images with more pixels than this are skipped (TIFFs: see --large) "
                   f"{shown_default('ingest.max_pixels')}.")
@click.option("--strict", is_flag=True, default=None, help="Exit with status 3 when any input was skipped.")
@click.option("--alpha", type=click.Choice(["keep", "flatten"]), default=None,
              help="keep: images with transparent pixels keep their alpha; flatten: composite "
                   f"them on the background {shown_default('ingest.alpha')}.")
@click.option("--large", type=click.Choice(["bands", "skip"]), default=None,
              help="Images over --max-pixels: bands: read a TIFF/BigTIFF (or a Zarr image, "
                   "read so at any size) in bands of rows, never whole; skip: skip every one "
                   f"{shown_default('ingest.large')}.")
@storage_opt
@source_opt
@job_options
def ingest_cmd(ctx: click.Context, src: str | None, store: str | None, config_path: str | None,
               scheduler: str | None, chunk_pixels: int | None, codec: str | None,
               max_pixels: int | None, strict: bool | None, alpha: str | None,
               large: str | None, storage_options: tuple[str, ...], source_options: tuple[str, ...],
               no_lock: bool, overwrite: bool, progress: bool | None, as_json: bool) -> None:
    """Decode the images under SRC (folder, glob or list file) into the Zarr store STORE.

    SRC may be a URL read by the workers themselves: a prefix such as s3://bucket/photos/, a
    glob, or a text file (local or at a URL) listing image URLs (see --source-option).
    STORE is a folder or a URL such as s3://bucket/faces.zarr (see --storage-option).
    A folder named *.zarr (a Zarr array or an OME-Zarr image) is one image, read in bands.
    Parallel on Dask and resumable: rerun the same command after an interruption.
    Unreadable inputs are skipped and recorded with a reason (see `streamq info`).
    """
    from streamq.config import load_config
    from streamq.ingest import ingest

    cfg = load_config(config_path, **{
        "ingest.source": src, "store": store, "dask.scheduler": scheduler,
        "ingest.chunk_pixels": chunk_pixels, "ingest.codec": codec,
        "ingest.max_pixels": max_pixels, "ingest.strict": strict, "ingest.alpha": alpha,
        "ingest.large": large},
        **storage_overrides(storage_options), **source_overrides(source_options),
        **lock_overrides(no_lock))
    summary = ingest(None, None, config=cfg, overwrite=overwrite,
                     progress=progress_flag(ctx, progress))
    echo_result(summary, as_json)
    if cfg.ingest.strict and summary.n_skipped:
        click.echo(f"error: {summary.n_skipped} inputs were skipped and --strict is set", err=True)
        ctx.exit(3)
