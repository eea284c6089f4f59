"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]

config_opt = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="YAML configuration file (see configs/default.yaml); flags override its keys.")
scheduler_opt = click.option(
    "--scheduler", default=None, metavar="ADDRESS",
    help="Dask scheduler address (tcp://HOST:PORT), or 'threads'/'sync' to run in-process. "
         "Default: a local cluster sized to this machine (also STREAMQ_SCHEDULER).")
overwrite_opt = click.option(
    "--overwrite", is_flag=True, help="Replace existing results made with other inputs or settings.")
progress_opt = click.option(
    "--progress/--no-progress", default=None,
    help="Show a progress bar on stderr (default: when stderr is a terminal).")
json_opt = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
seed_opt = click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
max_steps_opt = click.option("--max-steps", type=int, default=None,
                             help="Stop after this many mini-batch steps.")
