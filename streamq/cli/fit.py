"""``streamq fit``: the shared palette (or one per image, ``--per-image``)."""

from __future__ import annotations

import os

import click

from streamq.cli.common import (
    NO_STORE,
    Output,
    echo_result,
    job_options,
    lock_overrides,
    progress_flag,
)
from streamq.cli.options import (
    config_opt,
    max_steps_opt,
    scheduler_opt,
    seed_opt,
    shown_default,
    storage_opt,
    storage_overrides,
)


@click.command("fit", short_help="Learn a K-colour palette (or one per image).")
@click.argument("store", required=False)
@config_opt
@scheduler_opt
@click.option("-k", "--colors", default=None,
              help=f"Palette size K, 2..65536 {shown_default('fit.colors')}; with --per-image a "
                   f"list of K {shown_default('per_image.colors')}.")
@click.option("--per-image", is_flag=True, default=False,
              help="One palette per image (k-means on a pixel sample of each image), for each K.")
@click.option("--sample", type=float, default=None,
              help="--per-image: fraction of each image's pixels to fit on "
                   f"{shown_default('per_image.sample')}.")
@click.option("--method", type=click.Choice(["kmeans", "histogram"]), default=None,
              help="--per-image: kmeans (scikit-learn KMeans, the tutorial's) or histogram "
                   "(the same k-means on the sample's distinct colours, compiled; faster) "
                   f"{shown_default('per_image.method')}.")
@click.option("--algorithm", type=click.Choice(["minibatch", "lloyd"]), default=None,
              help="minibatch: streamed MiniBatchKMeans, then exact Lloyd on every pixel from "
                   "its centres and k-means++ starts; lloyd: the exact Lloyd alone "
                   f"{shown_default('fit.algorithm')}.")
@click.option("--init", type=click.Choice(["k-means++", "random"]), default=None,
              help=f"Initial centres {shown_default('fit.init')}.")
@click.option("--n-init", type=int, default=None,
              help="k-means++ starts raced on the colour grid, side by side; the best 2 go on, "
                   "and are finished on every colour (only the better one when a finer grid "
                   f"ranks them) {shown_default('fit.n_init')}.")
@click.option("--color-space", type=click.Choice(["rgb", "oklab"]), default=None,
              help=f"Space distances are measured in {shown_default('fit.color_space')}.")
@click.option("--tol", type=float, default=None,
              help="Stop when the squared centre shifts of a step sum to at most TOL times the "
                   "pixels' variance (scikit-learn's rule); 0: exact Lloyd runs to zero label "
                   f"changes {shown_default('fit.tol')}.")
@max_steps_opt("fit.max_steps")
@click.option("--max-iter", type=int, default=None,
              help="Exact Lloyd: stop a start after this many iterations "
                   f"{shown_default('fit.max_iter')}.")
@click.option("--batch-size", type=int, default=None,
              help=f"Pixels per partial_fit step {shown_default('fit.batch_size')}.")
@seed_opt("fit.seed")
@click.option("--quality", metavar="MIN-MAX", default=None,
              help="Instead of -k: the smallest K in --k-range whose palette (exact Lloyd, as "
                   "--algorithm lloyd) reaches PSNR MAX dB over every pixel; exit status 99 "
                   "when even the largest K stays below MIN. MAX alone: MIN is 0. With "
                   "--per-image: for each image, over its own pixels (exit 99 when some image "
                   "stays below MIN; the others are fitted).")
@click.option("--k-range", "k_range", metavar="LO-HI", default=None,
              help=f"--quality: the K searched {shown_default('fit.k_range', '-')} (with "
                   "--per-image: for each image, at most 256).")
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
@job_options
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
    from streamq.fit.quality import check_flags, parse_range

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
            "per_image.seed": seed, "per_image.fixed_colors": fixed_colors,
            **{f"per_image.{k.split('.')[1]}": v for k, v in targets.items()}},
            **storage_overrides(storage_options), **lock_overrides(no_lock))
        if cfg.store is None:
            raise click.UsageError(NO_STORE)
        echo_result(fit_per_image(cfg.store, config=cfg, overwrite=overwrite,
                                  progress=progress_flag(ctx, progress)), as_json)
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
        **storage_overrides(storage_options), **lock_overrides(no_lock))
    if cfg.store is None:
        raise click.UsageError(NO_STORE)
    if save_palette is not None:  # a bad FILE is refused before the fit, not after
        from streamq.palettes import check_palette_path

        check_palette_path(save_palette, cfg.fit.k_range[0] if cfg.fit.quality else cfg.fit.colors)
    result = fit(cfg.store, config=cfg, overwrite=overwrite, progress=progress_flag(ctx, progress))
    saved = None
    if save_palette is not None:
        from streamq.palettes import write_palette

        name = f"streamq {os.path.basename(result.store.rstrip('/'))} K={result.k}"
        fmt = write_palette(save_palette, result.palette, name=name,
                            storage_options=cfg.storage_options or None)
        saved = f"wrote the palette to {save_palette} ({fmt}, {result.k} colours)"
    echo_result(Output({**result.to_dict(), "saved_palette": save_palette},
                       lambda: str(result) + (f"\n{saved}" if saved else "")), as_json)
