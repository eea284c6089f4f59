"""``streamq`` commands, listed in pipeline order."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import click

from streamq._version import __version__
from streamq.cli.options import (
    config_opt,
    json_opt,
    max_steps_opt,
    no_lock_opt,
    overwrite_opt,
    progress_opt,
    scheduler_opt,
    seed_opt,
    source_opt,
    source_overrides,
    storage_opt,
    storage_overrides,
)
from streamq.errors import StreamQError

log = logging.getLogger("streamq.cli")


#: ``streamq --help`` lists the commands in this order: the pipeline, then the helpers.
ORDER = ["example", "ingest", "info", "fit", "quantize", "cluster-images", "export", "report",
         "run", "unlock", "warmup"]


class _Ordered(click.Group):
    """List commands in pipeline order (:data:`ORDER`, then any other) in ``--help``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [c for c in ORDER if c in self.commands]
        return known + [c for c in self.commands if c not in known]


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors into one line on stderr and exit status 1 (the traceback at -vv).

    streamq's own errors and OS errors say what to fix; anything else is unexpected (a
    damaged store, a bug): its one line says so and how to see the traceback.
    """

    from streamq import redact

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("verbosity", 0) >= 2:
                raise
            line = redact.text(_one_line(exc))  # no credential, whatever raised it
            if isinstance(exc, StreamQError | OSError):
                click.echo(f"error: {line}", err=True)
            else:
                click.echo(f"error: unexpected {type(exc).__name__}: {line} (a damaged "
                           "store or a bug: rerun with -vv for the traceback)", err=True)
            ctx.exit(getattr(exc, "exit_status", 1))  # fit --quality below MIN: 99

    return wrapper


@click.group(cls=_Ordered, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="streamq")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug and tracebacks).")
@click.option("-q", "--quiet", count=True, help="Less output: errors only, no progress bar.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Colour quantization of image collections larger than memory.

    Pipeline: ingest -> fit -> quantize -> [cluster-images] -> export (or all of them:
    run CONFIG.yaml); info and report (an HTML page) look at a store. Tutorial:
    docs/tutorial.md.
    """
    from streamq.console import set_log_level

    verbosity = verbose - quiet
    ctx.obj = {"verbosity": verbosity, "quiet": quiet > 0}
    set_log_level(max(10, 30 - 10 * verbosity))


def _progress(ctx: click.Context, flag: bool | None) -> bool | None:
    return False if ctx.obj["quiet"] else flag


def _lock_overrides(no_lock: bool) -> dict[str, Any]:
    """``--no-lock`` as a config override (absent: the config file decides)."""
    return {"lock.enabled": False} if no_lock else {}


@cli.command("example", short_help="Write an LFW-shaped example folder of photo crops.")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("-n", "--images", "n_images", type=click.IntRange(min=1), default=60,
              show_default=True, help="Number of images.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the crops.")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Fixed square size (LFW: 250); default mixed sizes.")
@_handle_errors
def example_cmd(out: str, n_images: int, seed: int, size: int | None) -> None:
    """Write an LFW-shaped example folder cut from photos bundled with installed packages."""
    from streamq.examples import make_collection

    paths = make_collection(out, n_images, seed=seed, size=size)
    names = {p.parent.name for p in paths}
    click.echo(f"wrote {len(paths)} images of {len(names)} names under {out}")


@cli.command("ingest", short_help="Decode a folder of images into a Zarr store.")
@click.argument("src", required=False)
@click.argument("store", required=False)
@config_opt
@scheduler_opt
@click.option("--chunk-pixels", type=int, default=None, help="Pixels per chunk [default: 4194304].")
@click.option("--codec", type=click.Choice(["zstd", "lz4", "none"]), default=None,
              help="Compression of pixel chunks [default: lz4].")
@click.option("--max-pixels", type=int, default=None, help="Skip images with more pixels than this.")
@click.option("--strict", is_flag=True, default=None, help="Exit with status 3 when any input was skipped.")
@click.option("--alpha", type=click.Choice(["keep", "flatten"]), default=None,
              help="keep: images with transparent pixels keep their alpha; flatten: composite "
                   "them on the background [default: keep].")
@click.option("--large", type=click.Choice(["bands", "skip"]), default=None,
              help="Images over --max-pixels: bands: read a TIFF/BigTIFF in bands of rows, "
                   "never whole; skip: skip every one [default: bands].")
@storage_opt
@source_opt
@no_lock_opt
@overwrite_opt
@progress_opt
@json_opt
@click.pass_context
@_handle_errors
def ingest_cmd(ctx: click.Context, src: str | None, store: str | None, config_path: str | None,
               scheduler: str | None, chunk_pixels: int | None, codec: str | None,
               max_pixels: int | None, strict: bool | None, alpha: str | None,
               large: str | None, storage_options: tuple[str, ...], source_options: tuple[str, ...],
               no_lock: bool, overwrite: bool, progress: bool | None, as_json: bool) -> None:
    """Decode the images under SRC (folder, glob or list file) into the Zarr store STORE.

    SRC may be a URL read by the workers themselves: a prefix such as s3://bucket/photos/, a
    glob, or a text file (local or at a URL) listing image URLs (see --source-option).
    STORE is a folder or a URL such as s3://bucket/faces.zarr (see --storage-option).
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
        **_lock_overrides(no_lock))
    summary = ingest(None, None, config=cfg, overwrite=overwrite, progress=_progress(ctx, progress))
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not ctx.obj["quiet"]:
        click.echo(str(summary))
    if cfg.ingest.strict and summary.n_skipped:
        click.echo(f"error: {summary.n_skipped} inputs were skipped and --strict is set", err=True)
        ctx.exit(3)


@cli.command("fit", short_help="Learn a K-colour palette (or one per image).")
@click.argument("store", required=False)
@config_opt
@scheduler_opt
@click.option("-k", "--colors", default=None,
              help="Palette size K, 2..65536 [default: 16]; with --per-image a list like 2,6,30.")
@click.option("--per-image", is_flag=True, default=False,
              help="One palette per image (k-means on a pixel sample of each image), for each K.")
@click.option("--sample", type=float, default=None,
              help="--per-image: fraction of each image's pixels to fit on [default: 0.7].")
@click.option("--method", type=click.Choice(["kmeans", "histogram"]), default=None,
              help="--per-image: kmeans (scikit-learn KMeans, the tutorial's) or histogram "
                   "(the same k-means on the sample's distinct colours, compiled; faster) "
                   "[default: kmeans].")
@click.option("--algorithm", type=click.Choice(["minibatch", "lloyd"]), default=None,
              help="minibatch (default): streamed MiniBatchKMeans, then exact Lloyd on every "
                   "pixel from its centres and k-means++ starts; lloyd: the exact Lloyd alone.")
@click.option("--init", type=click.Choice(["k-means++", "random"]), default=None,
              help="Initial centres [default: k-means++].")
@click.option("--n-init", type=int, default=None,
              help="k-means++ starts raced on the colour grid, side by side; the best 2 finish "
                   "on every colour [default: 16].")
@click.option("--color-space", type=click.Choice(["rgb", "oklab"]), default=None,
              help="Space distances are measured in [default: rgb].")
@click.option("--tol", type=float, default=None,
              help="Stop when the squared centre shifts of a step sum to at most TOL times the "
                   "pixels' variance (scikit-learn's rule); 0: exact Lloyd runs to zero label "
                   "changes [default: 0].")
@max_steps_opt
@click.option("--max-iter", type=int, default=None,
              help="Exact Lloyd: stop a start after this many iterations [default: 1000].")
@click.option("--batch-size", type=int, default=None, help="Pixels per partial_fit step [default: 65536].")
@seed_opt
@click.option("--quality", metavar="MIN-MAX", default=None,
              help="Instead of -k: the smallest K in --k-range whose palette (exact Lloyd, as "
                   "--algorithm lloyd) reaches PSNR MAX dB over every pixel; exit status 99 "
                   "when even the largest K stays below MIN. MAX alone: MIN is 0.")
@click.option("--k-range", "k_range", metavar="LO-HI", default=None,
              help="--quality: the K searched [default: 2-256].")
@click.option("--save-palette", "save_palette", metavar="FILE", default=None,
              help="Also write the palette to FILE: .gpl (GIMP), .act (Adobe, at most 256 "
                   "colours), .json or .hex/.txt, by its extension; give it to `streamq "
                   "quantize OTHER --palette FILE` (or give this store itself).")
@click.option("--fixed-colors", "fixed_colors", metavar="SRC", default=None,
              help="Keep these colours in the palette exactly, as its first entries, and fit "
                   "the others: a .gpl, .act, .json or .hex/.txt file, an image or a store, as "
                   "for quantize --palette. K counts them (-k 64 with 8 fixed fits 56); "
                   "repeats are dropped. With --per-image: --method histogram.")
@storage_opt
@no_lock_opt
@overwrite_opt
@progress_opt
@json_opt
@click.pass_context
@_handle_errors
def fit_cmd(ctx: click.Context, store: str | None, config_path: str | None, scheduler: str | None,
            colors: str | None, per_image: bool, sample: float | None, method: str | None,
            algorithm: str | None, init: str | None, n_init: int | None,
            color_space: str | None, tol: float | None, max_steps: int | None, max_iter: int | None,
            batch_size: int | None, seed: int | None, quality: str | None,
            k_range: str | None, save_palette: str | None, fixed_colors: str | None,
            storage_options: tuple[str, ...], no_lock: bool, overwrite: bool,
            progress: bool | None, as_json: bool) -> None:
    """Learn one K-colour palette for the whole collection in STORE (or one per image).

    With --quality MIN-MAX, K is the smallest of --k-range whose palette reaches MAX dB.
    Resumable: rerun the same command after an interruption for a bit-identical palette.
    """
    from streamq.config import load_config
    from streamq.fit import fit
    from streamq.quality import check_flags, parse_range

    check_flags(quality, k_range, colors=colors, per_image=per_image, algorithm=algorithm)
    targets = {"fit.quality": None if quality is None else parse_range(quality, "--quality"),
               "fit.k_range": None if k_range is None else parse_range(k_range, "--k-range", True)}
    if per_image and save_palette is not None:
        raise click.UsageError("--save-palette writes the shared palette: it does not go with "
                               "--per-image")
    if per_image:
        from streamq.per_image import fit_per_image

        cfg = load_config(config_path, **{
            "store": store, "dask.scheduler": scheduler, "per_image.colors": colors,
            "per_image.sample": sample, "per_image.method": method, "per_image.init": init,
            "per_image.seed": seed, "per_image.fixed_colors": fixed_colors},
            **storage_overrides(storage_options), **_lock_overrides(no_lock))
        if cfg.store is None:
            raise click.UsageError("no store given: pass STORE or set key 'store' in --config")
        summary = fit_per_image(cfg.store, config=cfg, overwrite=overwrite,
                                progress=_progress(ctx, progress))
        if as_json:
            click.echo(json.dumps(summary.to_dict(), indent=2))
        elif not ctx.obj["quiet"]:
            click.echo(str(summary))
        return
    if method is not None:
        raise click.UsageError("--method applies to per-image palettes: add --per-image")
    if colors is not None and not colors.strip().isdigit():
        raise click.BadParameter(f"{colors!r} is not one integer (lists need --per-image)",
                                 param_hint="--colors")
    cfg = load_config(config_path, **{
        "store": store, "dask.scheduler": scheduler,
        "fit.colors": None if colors is None else int(colors),
        "fit.algorithm": algorithm, "fit.init": init, "fit.n_init": n_init,
        "fit.color_space": color_space, "fit.tol": tol, "fit.max_steps": max_steps,
        "fit.max_iter": max_iter, "fit.batch_size": batch_size, "fit.seed": seed,
        "fit.fixed_colors": fixed_colors, **targets},
        **storage_overrides(storage_options), **_lock_overrides(no_lock))
    if cfg.store is None:
        raise click.UsageError("no store given: pass STORE or set key 'store' in --config")
    if save_palette is not None:  # a bad FILE is refused before the fit, not after
        from streamq.palettes import check_palette_path

        check_palette_path(save_palette, cfg.fit.k_range[0] if cfg.fit.quality else cfg.fit.colors)
    result = fit(cfg.store, config=cfg, overwrite=overwrite, progress=_progress(ctx, progress))
    saved = None
    if save_palette is not None:
        from streamq.palettes import write_palette

        name = f"streamq {os.path.basename(result.store.rstrip('/'))} K={result.k}"
        fmt = write_palette(save_palette, result.palette, name=name,
                            storage_options=cfg.storage_options or None)
        saved = f"wrote the palette to {save_palette} ({fmt}, {result.k} colours)"
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "saved_palette": save_palette}, indent=2))
    elif not ctx.obj["quiet"]:
        click.echo(str(result) + (f"\n{saved}" if saved else ""))


@cli.command("quantize", short_help="Label every pixel with its nearest palette colour.")
@click.argument("store", required=False)
@config_opt
@scheduler_opt
@click.option("--palette", "palette", metavar="SRC", default=None,
              help="Use this palette instead of a fitted one: a .gpl, .act, .json or .hex/.txt "
                   "file, an image (the palette entries it uses, or its distinct colours, at "
                   "most 65536) or another store (its fitted palette). It becomes STORE's "
                   "palette; the same palette again does nothing.")
@click.option("--color-space", type=click.Choice(["rgb", "oklab"]), default=None,
              help="--palette: space distances are measured in [default: the source store's "
                   "fit's, else STORE's fit's, else rgb].")
@storage_opt
@click.option("--overwrite", is_flag=True,
              help="Compute every label again, even those up to date; with --palette also "
                   "replace STORE's palette (a fit or another given palette).")
@click.option("--no-ssim", is_flag=True,
              help="Skip the per-image SSIM (labels faster; config key quantize.ssim).")
@no_lock_opt
@progress_opt
@json_opt
@click.pass_context
@_handle_errors
def quantize_cmd(ctx: click.Context, store: str | None, config_path: str | None,
                 scheduler: str | None, palette: str | None, color_space: str | None,
                 storage_options: tuple[str, ...], no_lock: bool, overwrite: bool,
                 no_ssim: bool, progress: bool | None, as_json: bool) -> None:
    """Label every pixel of STORE with its nearest palette colour, chunk by chunk.

    Also computes per-image and collection MSE/PSNR and each image's SSIM on its luma
    (see `streamq info`). Resumable.
    With --palette SRC, the palette is given rather than fitted: exact nearest colour, ties
    to the lowest index (its position in SRC).
    """
    from streamq.config import load_config
    from streamq.quantize import quantize

    cfg = load_config(config_path, **{"store": store, "dask.scheduler": scheduler,
                                      "quantize.palette": palette,
                                      "quantize.color_space": color_space,
                                      "quantize.ssim": False if no_ssim else None},
                      **storage_overrides(storage_options), **_lock_overrides(no_lock))
    palette, color_space = cfg.quantize.palette, cfg.quantize.color_space  # flags or --config
    if palette is None and color_space is not None:
        raise click.UsageError("--color-space goes with --palette SRC")
    if cfg.store is None:
        raise click.UsageError("no store given: pass STORE or set key 'store' in --config")
    from streamq.per_image import PerImageSummary, summary_of

    summary = quantize(cfg.store, config=cfg, progress=_progress(ctx, progress),
                       overwrite=overwrite, palette=palette, color_space=color_space)
    summaries = [summary]
    per_image = summary_of(cfg.store, cfg.storage_options)
    if per_image is not None and not isinstance(summary, PerImageSummary):
        summaries.append(per_image)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in summaries], indent=2))
    elif not ctx.obj["quiet"]:
        lines = list(map(str, summaries))
        if palette is not None:
            from streamq.fit import load_fit
            from streamq.palettes import describe_source

            given = load_fit(cfg.store, cfg.storage_options).palette_source
            lines.insert(0, f"palette: {describe_source(given)}")
        click.echo("\n".join(lines))


@cli.command("cluster-images", short_help="Group the images by their palette histograms.")
@click.argument("store", required=False)
@config_opt
@scheduler_opt
@click.option("-g", "--groups", type=int, default=None, help="Number of image groups G [default: 8].")
@click.option("--descriptor", type=click.Choice(["histogram", "histogram+moments"]), default=None,
              help="Palette histogram of each image, optionally with its colour moments "
                   "[default: histogram].")
@click.option("--moments-weight", type=float, default=None,
              help="histogram+moments: factor on the six colour moments [default: 1.0].")
@click.option("--batch-size", type=int, default=None, help="Images per partial_fit step [default: 1024].")
@click.option("--tol", type=float, default=None, help="Stop when no group centre moves more than this.")
@max_steps_opt
@seed_opt
@storage_opt
@no_lock_opt
@overwrite_opt
@progress_opt
@json_opt
@click.pass_context
@_handle_errors
def cluster_images_cmd(ctx: click.Context, store: str | None, config_path: str | None,
                       scheduler: str | None, groups: int | None, descriptor: str | None,
                       moments_weight: float | None, batch_size: int | None, tol: float | None,
                       max_steps: int | None, seed: int | None, storage_options: tuple[str, ...],
                       no_lock: bool, overwrite: bool, progress: bool | None,
                       as_json: bool) -> None:
    """Group the images of STORE by their colours (palette histograms), into G groups.

    Needs the labels of `streamq quantize`. Resumable; `streamq info` shows the groups.
    """
    from streamq.config import load_config
    from streamq.groups import cluster_images

    cfg = load_config(config_path, **{
        "store": store, "dask.scheduler": scheduler, "cluster_images.groups": groups,
        "cluster_images.descriptor": descriptor, "cluster_images.moments_weight": moments_weight,
        "cluster_images.batch_size": batch_size, "cluster_images.tol": tol,
        "cluster_images.max_steps": max_steps, "cluster_images.seed": seed},
        **storage_overrides(storage_options), **_lock_overrides(no_lock))
    if cfg.store is None:
        raise click.UsageError("no store given: pass STORE or set key 'store' in --config")
    result = cluster_images(cfg.store, config=cfg, overwrite=overwrite,
                            progress=_progress(ctx, progress))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif not ctx.obj["quiet"]:
        click.echo(str(result))


@cli.command("export", short_help="Write the quantized images as image files (or Zarr arrays).")
@click.argument("store", required=False)
@click.argument("out", required=False)
@config_opt
@scheduler_opt
@click.option("--zarr", "as_zarr", is_flag=True, default=None,
              help="Write OUT as a Zarr v3 store of labels + palette + image table (no image "
                   "files); layout in docs/store-format.md.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default=None,
              help="File format [default: png, a palette PNG when K <= 256].")
@click.option("--dither", is_flag=True, default=None, help="Floyd-Steinberg dithering.")
@click.option("--label", "labels", multiple=True, help="Only images with this label (repeatable).")
@click.option("--ids", default=None, help="Only these image ids, e.g. 0,5,10-20.")
@click.option("--png-level", type=int, default=None, help="zlib level of PNG files, 0..9 [default: 1].")
@click.option("--per-image", "per_image", default=None, metavar="K",
              help="Export the per-image palettes of this K instead of the shared palette "
                   "(--zarr: also a list such as 2,6,30, one group per K).")
@storage_opt
@overwrite_opt
@progress_opt
@json_opt
@click.pass_context
@_handle_errors
def export_cmd(ctx: click.Context, store: str | None, out: str | None, config_path: str | None,
               scheduler: str | None, as_zarr: bool | None, fmt: str | None, dither: bool | None,
               labels: tuple[str, ...], ids: str | None, png_level: int | None,
               per_image: str | None, storage_options: tuple[str, ...], overwrite: bool,
               progress: bool | None, as_json: bool) -> None:
    """Rebuild the quantized images of STORE as files under OUT, mirroring the source tree.

    OUT is a folder or a URL such as s3://bucket/faces-64 (one object per image). Names
    that a case-insensitive file system would take for one file (A.jpg, a.JPG) are told
    apart as a~2.png, ...: the summary counts them and OUT/.streamq-export.json lists them.

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
    if cfg.store is None or cfg.export.out is None:
        raise click.UsageError("pass STORE and OUT (or set keys 'store' and 'export.out')")
    e = cfg.export
    common = dict(labels=list(labels) or None, ids=ids, per_image=e.per_image,
                  overwrite=overwrite, config=cfg, progress=_progress(ctx, progress))
    if e.zarr:
        if fmt is not None or dither or png_level is not None:
            raise click.UsageError("--format, --dither and --png-level are for image files, "
                                   "not --zarr")
        summary: Any = export(cfg.store, e.out, zarr=True, **common)
    else:
        summary = export(cfg.store, e.out, format=e.format, dither=e.dither,
                         png_level=e.png_level, quality=e.quality, **common)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not ctx.obj["quiet"]:
        click.echo(str(summary))


@cli.command("run", short_help="Run every stage from one YAML configuration.")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@scheduler_opt
@storage_opt
@source_opt
@no_lock_opt
@overwrite_opt
@progress_opt
@json_opt
@click.pass_context
@_handle_errors
def run_cmd(ctx: click.Context, config_path: str, scheduler: str | None,
            storage_options: tuple[str, ...], source_options: tuple[str, ...], no_lock: bool,
            overwrite: bool, progress: bool | None, as_json: bool) -> None:
    """Run ingest -> fit -> quantize -> export as described by CONFIG.yaml.

    Rerun the same command after an interruption: every stage resumes or is skipped when done.
    """
    from streamq.config import load_config
    from streamq.pipeline import run

    cfg = load_config(config_path, **{"dask.scheduler": scheduler},
                      **storage_overrides(storage_options), **source_overrides(source_options),
                      **_lock_overrides(no_lock))
    report = run(cfg, progress=_progress(ctx, progress), overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    elif not ctx.obj["quiet"]:
        click.echo(str(report))


@cli.command("info", short_help="Show what a store holds; a grid of samples.")
@click.argument("store")
@config_opt
@storage_opt
@json_opt
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many labels and shapes to list.")
@click.option("--grid", type=click.Path(dir_okay=False), default=None,
              help="Write a grid of sample images titled with their labels to this PNG.")
@click.option("--grid-shape", default="2x5", show_default=True, help="Grid rows x columns.")
@click.option("--seed", default=0, show_default=True, help="Seed of the grid's sample.")
@_handle_errors
def info_cmd(store: str, config_path: str | None, storage_options: tuple[str, ...], as_json: bool,
             top: int, grid: str | None, grid_shape: str, seed: int) -> None:
    """Show what STORE holds: images, pixels, sizes, labels, shapes, skipped inputs."""
    from streamq.config import load_config
    from streamq.info import collection_info, format_info, save_grid
    from streamq.store import open_store

    cfg = load_config(config_path, **storage_overrides(storage_options))
    coll = open_store(store, cfg.storage_options)
    info = collection_info(coll, top=top)
    if grid:
        try:
            rows, cols = (int(x) for x in grid_shape.lower().split("x"))
        except ValueError:
            rows = cols = 0
        if rows < 1 or cols < 1:
            raise click.BadParameter(f"{grid_shape!r} is not ROWSxCOLS with both at least 1, e.g. 2x5",
                                     param_hint="--grid-shape")
        if os.path.splitext(grid)[1].lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
            raise click.BadParameter(f"{grid!r} should end in .png, .jpg, .pdf or .svg",
                                     param_hint="--grid")
        info["grid"] = {"path": grid, "ids": save_grid(coll, grid, rows, cols, seed=seed)}
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@cli.command("report", short_help="Write a one-file HTML report of a store.")
@click.argument("store", required=False)
@click.argument("out", required=False)
@config_opt
@click.option("--samples", type=int, default=None,
              help="Images shown before and after quantization [default: 8].")
@click.option("--ids", default=None, help="Choose the shown images among these ids, e.g. 0,5,10-20.")
@click.option("--label", "labels", multiple=True, help="... or among images with this label (repeatable).")
@click.option("--seed", type=int, default=None, help="Seed of the sample of images [default: 0].")
@click.option("--worst", type=int, default=None,
              help="Worst images by PSNR listed with thumbnails [default: 10].")
@storage_opt
@json_opt
@click.pass_context
@_handle_errors
def report_cmd(ctx: click.Context, store: str | None, out: str | None, config_path: str | None,
               samples: int | None, ids: str | None, labels: tuple[str, ...], seed: int | None,
               worst: int | None, storage_options: tuple[str, ...], as_json: bool) -> None:
    """Write an HTML report of STORE to OUT.html: one self-contained page, readable offline.

    Palette, before/after images, convergence, PSNR, collection statistics and run facts:
    whatever the store holds so far, and what is missing.
    """
    from streamq.config import load_config
    from streamq.report import report

    cfg = load_config(config_path, **{"store": store, "report.out": out, "report.samples": samples,
                                      "report.seed": seed, "report.worst": worst},
                      **storage_overrides(storage_options))
    if cfg.store is None or cfg.report.out is None:
        raise click.UsageError("pass STORE and OUT (or set keys 'store' and 'report.out')")
    summary = report(cfg.store, config=cfg, ids=ids, labels=list(labels) or None)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not ctx.obj["quiet"]:
        click.echo(str(summary))


@cli.command("unlock", short_help="Remove the write lock of a job that is gone.")
@click.argument("store")
@click.option("--force", is_flag=True,
              help="Also remove a lock whose owner runs on another host and still sends heartbeats.")
@config_opt
@storage_opt
@_handle_errors
def unlock_cmd(store: str, force: bool, config_path: str | None,
               storage_options: tuple[str, ...]) -> None:
    """Remove the write lock (STORE.lock) of a job that is gone.

    Seldom needed: the next command that writes STORE takes a stale lock over by itself.
    Refuses while the owner runs on this host; an owner on another host is removed when its
    heartbeat is older than lock.stale_after, or at once with --force. STORE may be a URL
    (s3://bucket/faces.zarr: the lock is the object s3://bucket/faces.zarr.lock).
    """
    from streamq.config import load_config
    from streamq.lock import unlock

    cfg = load_config(config_path, **storage_overrides(storage_options))
    removed = unlock(store, force=force, config=cfg.lock, storage_options=cfg.storage_options)
    if removed is None:
        click.echo(f"{store} is not locked")
    else:
        owner, why = removed
        click.echo(f"removed the lock of {owner.describe()}: {why}")


@cli.command("warmup", short_help="Compile the per-image kernels ahead of their first use.")
@click.pass_context
@_handle_errors
def warmup_cmd(ctx: click.Context) -> None:
    """Compile the loops of `fit --per-image --method histogram` and of its labelling into
    numba's on-disk cache, so that the first fit does not compile them (a few seconds).

    Once per installation (and after an upgrade of streamq or numba), for example in the
    image or environment build; later runs only load them. Cluster workers share the cache
    when they share the installation's files.
    """
    import time

    from streamq.kmeans.precompile import precompile

    t0 = time.perf_counter()
    n = precompile()
    if not ctx.obj["quiet"]:
        click.echo(f"{n} per-image kernels compiled or loaded in {time.perf_counter() - t0:.1f} s")


def main() -> None:
    """The ``streamq`` command: SIGINT and SIGTERM end it after its cleanup, with status 130
    or 143 and one line (:mod:`streamq.cli.signals`)."""
    from streamq.cli.signals import call_exiting_on_signals

    call_exiting_on_signals(lambda: cli(prog_name="streamq"))


if __name__ == "__main__":
    main()
