"""``streamq quantize`` (a label per pixel) and ``streamq cluster-images`` (a group per image)."""

from __future__ import annotations

import click

from streamq.cli.common import (
    NO_STORE,
    Output,
    echo_result,
    handle_errors,
    job_options,
    lock_overrides,
    progress_flag,
)
from streamq.cli.options import (
    config_opt,
    json_opt,
    max_steps_opt,
    no_lock_opt,
    progress_opt,
    scheduler_opt,
    seed_opt,
    shown_default,
    storage_opt,
    storage_overrides,
)


@click.command("quantize", short_help="Label every pixel with its nearest palette colour.")
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
@handle_errors
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
    from streamq.quantize import QuantizeSummary, quantize

    cfg = load_config(config_path, **{"store": store, "dask.scheduler": scheduler,
                                      "quantize.palette": palette,
                                      "quantize.color_space": color_space,
                                      "quantize.ssim": False if no_ssim else None},
                      **storage_overrides(storage_options), **lock_overrides(no_lock))
    palette, color_space = cfg.quantize.palette, cfg.quantize.color_space  # flags or --config
    if palette is None and color_space is not None:
        raise click.UsageError("--color-space goes with --palette SRC")
    location = cfg.store
    if location is None:
        raise click.UsageError(NO_STORE)
    from streamq.per_image import PerImageSummary, summary_of

    summary = quantize(location, config=cfg, progress=progress_flag(ctx, progress),
                       overwrite=overwrite, palette=palette, color_space=color_space)
    summaries: list[QuantizeSummary | PerImageSummary] = [summary]
    per_image = summary_of(location, cfg.storage_options)
    if per_image is not None and not isinstance(summary, PerImageSummary):
        summaries.append(per_image)

    def text() -> str:
        lines = list(map(str, summaries))
        if palette is not None:
            from streamq.fit import load_fit
            from streamq.palettes import describe_source

            given = load_fit(location, cfg.storage_options).palette_source
            lines.insert(0, f"palette: {describe_source(given)}")
        return "\n".join(lines)

    echo_result(Output([s.to_dict() for s in summaries], text), as_json)


@click.command("cluster-images", short_help="Group the images by their palette histograms.")
@click.argument("store", required=False)
@config_opt
@scheduler_opt
@click.option("-g", "--groups", type=int, default=None,
              help=f"Number of image groups G {shown_default('cluster_images.groups')}.")
@click.option("--descriptor", type=click.Choice(["histogram", "histogram+moments"]), default=None,
              help="Palette histogram of each image, optionally with its colour moments "
                   f"{shown_default('cluster_images.descriptor')}.")
@click.option("--moments-weight", type=float, default=None,
              help="histogram+moments: factor on the six colour moments "
                   f"{shown_default('cluster_images.moments_weight')}.")
@click.option("--batch-size", type=int, default=None,
              help=f"Images per partial_fit step {shown_default('cluster_images.batch_size')}.")
@click.option("--tol", type=float, default=None,
              help="Stop when the squared group centre shifts of a step sum to at most TOL "
                   "times the descriptors' variance, for several steps in a row (key "
                   f"cluster_images.patience) {shown_default('cluster_images.tol')}.")
@max_steps_opt("cluster_images.max_steps")
@seed_opt("cluster_images.seed")
@storage_opt
@job_options
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
        **storage_overrides(storage_options), **lock_overrides(no_lock))
    if cfg.store is None:
        raise click.UsageError(NO_STORE)
    echo_result(cluster_images(cfg.store, config=cfg, overwrite=overwrite,
                               progress=progress_flag(ctx, progress)), as_json)
