"""``streamq info`` and ``streamq report``: what a store holds, as text, JSON or a page."""

from __future__ import annotations

import json
import os

import click

from streamq.cli.common import echo_result, handle_errors
from streamq.cli.options import (
    config_opt,
    json_opt,
    shown_default,
    storage_opt,
    storage_overrides,
)


@click.command("info", short_help="Show what a store holds; a grid of samples.")
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
@handle_errors
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
    # what was asked for, even with -q
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@click.command("report", short_help="Write a one-file HTML report of a store.")
@click.argument("store", required=False)
@click.argument("out", required=False)
@config_opt
@click.option("--samples", type=int, default=None,
              help="Images shown before and after quantization "
                   f"{shown_default('report.samples')}.")
@click.option("--ids", default=None, help="Choose the shown images among these ids, e.g. 0,5,10-20.")
@click.option("--label", "labels", multiple=True, help="... or among images with this label (repeatable).")
@click.option("--seed", type=int, default=None,
              help=f"Seed of the sample of images {shown_default('report.seed')}.")
@click.option("--worst", type=int, default=None,
              help=f"Worst images by PSNR listed with thumbnails {shown_default('report.worst')}.")
@storage_opt
@json_opt
@handle_errors
def report_cmd(store: str | None, out: str | None, config_path: str | None,
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
    echo_result(report(cfg.store, config=cfg, ids=ids, labels=list(labels) or None), as_json)
