"""``streamq unlock``, ``streamq upgrade`` and ``streamq warmup``: helpers beside the pipeline."""

from __future__ import annotations

import click

from streamq.cli.common import echo_result, handle_errors, lock_overrides
from streamq.cli.options import config_opt, json_opt, no_lock_opt, storage_opt, storage_overrides
from streamq.warmup import GROUPS  # names only: the kernels are imported when it runs


@click.command("unlock", short_help="Remove the write lock of a job that is gone.")
@click.argument("store")
@click.option("--force", is_flag=True,
              help="Also remove a lock whose owner runs on another host and still sends heartbeats.")
@config_opt
@storage_opt
@handle_errors
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


@click.command("upgrade", short_help="Rename the arrays of a store of an older format.")
@click.argument("store")
@config_opt
@storage_opt
@no_lock_opt
@json_opt
@handle_errors
def upgrade_cmd(store: str, config_path: str | None, storage_options: tuple[str, ...],
                no_lock: bool, as_json: bool) -> None:
    """Bring STORE, written by an older streamq, to the current store format in place.

    Renames its arrays and keys (format 3 spells centres `centers`, as scikit-learn);
    nothing is recomputed. Holds the store's write lock; if it is stopped, run it again to
    finish. A store already current is left as it is. STORE may be a URL (s3://...).
    """
    from streamq.config import load_config
    from streamq.store.upgrade import upgrade

    cfg = load_config(config_path, **storage_overrides(storage_options), **lock_overrides(no_lock))
    echo_result(upgrade(store, config=cfg), as_json)


@click.command("warmup", short_help="Compile streamq's kernels ahead of their first use.")
@click.argument("groups", nargs=-1, metavar="[GROUP]...",
                type=click.Choice(list(GROUPS)))
@click.pass_context
@handle_errors
def warmup_cmd(ctx: click.Context, groups: tuple[str, ...]) -> None:
    """Compile streamq's compiled loops into numba's on-disk cache, so that no job pays for
    compiling them (about 22 s for all of them in one process, shared by the processes that
    run this command at the same time), and write the bytecode of streamq's modules where
    it is missing (an editable install, or PYTHONDONTWRITEBYTECODE set).

    GROUP limits it to the kernels of ingest, fit (the shared palette), per-image
    (`fit --per-image --method histogram`), quantize (labels, dithering) or ssim; all by
    default. Once per installation (and after an upgrade of streamq or numba), for example in
    the image or environment build; later runs only load them. Cluster workers share the
    cache when they share the installation's files.
    """
    from streamq.warmup import warmup

    n, seconds = warmup(groups or None)
    if not ctx.obj["quiet"]:
        what = " ".join(groups) + " " if groups else ""
        click.echo(f"{n} {what}kernels compiled or loaded in {seconds:.1f} s")
