"""What every command shares: errors as one line, the printing of a result, small overrides."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from streamq.cli.options import json_opt, no_lock_opt, overwrite_opt, progress_opt
from streamq.errors import StreamQError

NO_STORE = "no store given: pass STORE or set key 'store' in --config"


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
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


@dataclass(frozen=True)
class Output:
    """What a command prints when it is more than one summary: ``data`` as JSON with
    ``--json``, else ``text`` (a callable is only called when the text is printed)."""

    data: Any
    text: str | Callable[[], str]


def echo_result(result: Any, as_json: bool, json_default: Callable[[Any], Any] | None = None
                ) -> None:
    """Print the result of a library call: JSON with ``--json``, nothing with ``-q``, else text.

    ``result`` is a summary (``to_dict()`` for the JSON, ``str()`` for the text) or an
    :class:`Output`; ``json_default`` converts values that JSON has no type for.
    """
    if as_json:
        data = result.data if isinstance(result, Output) else result.to_dict()
        click.echo(json.dumps(data, indent=2, default=json_default))
    elif not click.get_current_context().obj["quiet"]:
        text = result.text if isinstance(result, Output) else str(result)
        click.echo(text() if callable(text) else text)


def progress_flag(ctx: click.Context, progress: bool | None) -> bool | None:
    """``--progress/--no-progress`` as given, but off with ``-q``."""
    return False if ctx.obj["quiet"] else progress


def lock_overrides(no_lock: bool) -> dict[str, Any]:
    """``--no-lock`` as a config override (absent: the config file decides)."""
    return {"lock.enabled": False} if no_lock else {}


def job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The closing options of a command that writes a store, in their help order:
    ``--no-lock``, ``--overwrite``, ``--progress``, ``--json``; then the click context and
    :func:`handle_errors`."""
    for deco in (handle_errors, click.pass_context, json_opt, progress_opt, overwrite_opt,
                 no_lock_opt):
        fn = deco(fn)
    return fn
