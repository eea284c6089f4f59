"""``streamq run``: every stage from one YAML configuration."""

from __future__ import annotations

import click

from streamq.cli.common import echo_result, job_options, lock_overrides, progress_flag
from streamq.cli.options import (
    scheduler_opt,
    source_opt,
    source_overrides,
    storage_opt,
    storage_overrides,
)


@click.command("run", short_help="Run every stage from one YAML configuration.")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@scheduler_opt
@storage_opt
@source_opt
@job_options
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
                      **lock_overrides(no_lock))
    report = run(cfg, progress=progress_flag(ctx, progress), overwrite=overwrite)
    echo_result(report, as_json, json_default=str)
