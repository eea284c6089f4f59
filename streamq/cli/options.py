"""Options shared by several commands, and the defaults their help texts show."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import click

from streamq.config import describe

F = Callable[..., Any]

#: Every config key's default (``fit.colors`` -> 16): help texts show them from here, not copies.
_DEFAULTS: dict[str, Any] = {key: value for key, value, _ in describe()}


def default_of(key: str) -> Any:
    """The default of config key ``key`` (a dotted name such as ``fit.colors``)."""
    return _DEFAULTS[key]


def shown_default(key: str, sep: str = ",") -> str:
    """``[default: VALUE]`` for a help text, VALUE being the default of config key ``key``;
    a list's items are joined by ``sep`` (``2,6,30``; ``sep="-"`` for a range ``2-256``)."""
    value = default_of(key)
    text = sep.join(map(str, value)) if isinstance(value, tuple) else str(value)
    return f"[default: {text}]"


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


def seed_opt(key: str) -> Callable[[F], F]:
    """``--seed``, overriding config key ``key`` (e.g. ``fit.seed``)."""
    return click.option("--seed", type=int, default=None,
                        help=f"Random seed {shown_default(key)}.")


def max_steps_opt(key: str) -> Callable[[F], F]:
    """``--max-steps``, overriding config key ``key`` (e.g. ``fit.max_steps``)."""
    return click.option("--max-steps", type=int, default=None,
                        help=f"Stop after this many mini-batch steps {shown_default(key)}.")


storage_opt = click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    help="Option of the filesystem of a URL store or output (s3://...), e.g. "
         "endpoint_url=http://127.0.0.1:9000, anon=true, client_kwargs.region_name=eu-west-1 "
         "(repeatable; overrides key 'storage_options' of --config).")
source_opt = click.option(
    "--source-option", "source_options", multiple=True, metavar="KEY=VALUE",
    help="Option of the filesystem of a URL source (s3://..., gs://..., a list of URLs), as "
         "--storage-option; default: the storage options when the store is local or on the "
         "same kind of URL (repeatable; overrides key 'source_options' of --config).")
no_lock_opt = click.option(
    "--no-lock", is_flag=True, default=False,
    help="Write the store without taking its write lock (key lock.enabled: false): only for an "
         "object store without conditional writes, and only when no other job writes the store.")

# Values that stay text even when they look like numbers.
_TEXT_OPTIONS = {"key", "secret", "token", "username", "password", "profile", "region_name",
                 "endpoint_url"}


def storage_overrides(items: Sequence[str], section: str = "storage_options",
                      flag: str = "--storage-option") -> dict[str, Any]:
    """``--storage-option`` values as dotted config overrides (``storage_options.KEY``; or
    those of ``flag`` under ``section``, e.g. ``--source-option``, ``source_options``).

    ``true``/``false`` become booleans and integers become numbers (except for credentials
    and names); a dotted KEY such as ``client_kwargs.region_name`` sets a nested option.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:  # the value is not shown: it may be a credential given without its KEY=
            raise click.BadParameter("a value without '=' (not shown: it may hold a credential); "
                                     "expected KEY=VALUE such as secret=...",
                                     param_hint=flag)
        if not key or not all(key.split(".")):
            raise click.BadParameter(f"KEY {key!r} is empty or has an empty part; expected "
                                     "KEY=VALUE such as client_kwargs.region_name=eu-west-1",
                                     param_hint=flag)
        value: Any = text
        if text.strip().lower() in ("true", "false"):
            value = text.strip().lower() == "true"
        elif key.rsplit(".", 1)[-1] not in _TEXT_OPTIONS and re.fullmatch(r"-?\d+", text.strip()):
            value = int(text)
        elif key.rsplit(".", 1)[-1] not in _TEXT_OPTIONS and re.fullmatch(r"-?\d+\.\d*", text.strip()):
            value = float(text)
        out[f"{section}.{key}"] = value
    return out


def source_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--source-option`` values as dotted config overrides (``source_options.KEY``)."""
    return storage_overrides(items, "source_options", "--source-option")
