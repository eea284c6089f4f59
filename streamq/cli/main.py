"""The ``streamq`` group: global options, the commands in pipeline order, and :func:`main`.

Each command lives beside its stage family (``ingest.py``: example, ingest; ``fit.py``;
``quantize.py``: quantize, cluster-images; ``export.py``; ``view.py``: info, report;
``run.py``; ``tools.py``: unlock, upgrade, warmup); what they share is in ``common.py`` (errors as
one line, printing a result) and ``options.py`` (shared options, defaults from the config).
"""

from __future__ import annotations

import logging

import click

from streamq._version import __version__
from streamq.cli.export import export_cmd
from streamq.cli.fit import fit_cmd
from streamq.cli.ingest import example_cmd, ingest_cmd
from streamq.cli.quantize import cluster_images_cmd, quantize_cmd
from streamq.cli.run import run_cmd
from streamq.cli.tools import unlock_cmd, upgrade_cmd, warmup_cmd
from streamq.cli.view import info_cmd, report_cmd

log = logging.getLogger("streamq.cli")


#: ``streamq --help`` lists the commands in this order: the pipeline, then the helpers.
ORDER = ["example", "ingest", "info", "fit", "quantize", "cluster-images", "export", "report",
         "run", "unlock", "upgrade", "warmup"]


class _Ordered(click.Group):
    """List commands in pipeline order (:data:`ORDER`, then any other) in ``--help``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [c for c in ORDER if c in self.commands]
        return known + [c for c in self.commands if c not in known]


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


for _command in (example_cmd, ingest_cmd, info_cmd, fit_cmd, quantize_cmd, cluster_images_cmd,
                 export_cmd, report_cmd, run_cmd, unlock_cmd, upgrade_cmd, warmup_cmd):
    cli.add_command(_command)


def main() -> None:
    """The ``streamq`` command: SIGINT and SIGTERM end it after its cleanup, with status 130
    or 143 and one line (:mod:`streamq.cli.signals`)."""
    from streamq.cli.signals import call_exiting_on_signals

    call_exiting_on_signals(lambda: cli(prog_name="streamq"))


if __name__ == "__main__":
    main()
