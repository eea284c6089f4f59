"""``streamq run``: ingest -> fit -> quantize (-> cluster images) -> export (-> report) from one
configuration. With key ``quantize.palette`` the given palette takes the fit's place.

Every stage is resumable and a no-op when already done, so rerunning the same command after
an interruption at any point finishes with the same outputs as an uninterrupted run.

With key ``per_image.quality`` each image gets its own K (:mod:`streamq.per_image`): the
export is that fit's one K group (``k{HI}``: OUT itself, or one Zarr group). Images below MIN
do not stop the run: every stage finishes, then the run raises the fit's
:class:`~streamq.errors.QualityError` (exit status 99), as ``fit`` does.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from streamq.config import StreamQConfig, load_config, parse_config
from streamq.errors import ConfigError, QualityError
from streamq.fs import check_access, join, location

__all__ = ["RunReport", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What each stage did."""

    stages: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join(f"{name:<9}{summary}" for name, summary in self.stages.items())

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in self.stages.items()}


def run(config: StreamQConfig | dict[str, Any] | str | os.PathLike[str], *,
        progress: bool | None = None, overwrite: bool = False) -> RunReport:
    """Run the whole pipeline described by ``config`` (a config object, dict or YAML path)."""
    from streamq.export import export
    from streamq.fit import fit
    from streamq.ingest import ingest
    from streamq.quantize import quantize

    cfg = load_config(config) if isinstance(config, str | os.PathLike) else parse_config(config)
    if cfg.store is None or cfg.ingest.source is None:
        raise ConfigError("streamq run needs keys 'store' and 'ingest.source' in the config")
    if cfg.cluster_images.enabled and cfg.per_image.enabled:
        raise ConfigError("key 'cluster_images.enabled' needs the shared palette, but "
                          "'per_image.enabled' is true (per-image palettes only)")
    if cfg.fit.quality is not None and cfg.per_image.enabled:
        raise ConfigError("key 'fit.quality' chooses the K of the shared palette, but "
                          "'per_image.enabled' is true (per-image palettes take their K from "
                          "'per_image.colors', or 'per_image.quality')")
    if cfg.quantize.palette is not None and cfg.per_image.enabled:
        raise ConfigError("key 'quantize.palette' gives the shared palette, but "
                          "'per_image.enabled' is true (per-image palettes only)")
    if cfg.quantize.palette is not None and cfg.fit.quality is not None:
        raise ConfigError("keys 'quantize.palette' and 'fit.quality' exclude each other: a "
                          "given palette is not fitted")
    from streamq.lock import store_lock
    from streamq.scheduler import runner, shared

    loc = location(cfg.store, cfg.storage_options)  # a bad URL is refused before anything
    check_access(loc)
    report = RunReport()
    below_min: QualityError | None = None  # a per-image quality fit left images below MIN
    per_image_ks = cfg.per_image.groups
    # One lock for every stage (the stages take it again: it is re-entrant in this thread),
    # so no other job can slip in between two stages; and one cluster for every stage (a
    # local one of worker processes by default lends the shared fit threads of this process:
    # streamq.scheduler.runner).
    with (store_lock(loc, operation="run", create=True, config=cfg.lock),
          runner(cfg.dask) as run, shared(run)):
        report.stages["ingest"] = ingest(None, None, config=cfg, overwrite=overwrite, progress=progress)
        if cfg.per_image.enabled:
            from streamq.per_image import fit_per_image

            try:
                report.stages["fit"] = fit_per_image(cfg.store, config=cfg, overwrite=overwrite,
                                                     progress=progress)
            except QualityError as err:  # every palette is stored: finish, then fail as fit does
                below_min = err
                report.stages["fit"] = str(err)
        elif cfg.quantize.palette is None:
            report.stages["fit"] = fit(cfg.store, config=cfg, overwrite=overwrite, progress=progress)
        # quantize.palette: the given palette takes the fit's place (streamq.quantize.remap);
        # overwrite then also replaces another palette of the store
        labelled = quantize(cfg.store, config=cfg, progress=progress,
                            overwrite=overwrite and cfg.quantize.palette is not None)
        if cfg.quantize.palette is not None:
            from streamq.fit import load_fit

            report.stages["palette"] = load_fit(cfg.store, cfg.storage_options)
        report.stages["quantize"] = labelled
        if cfg.cluster_images.enabled:
            from streamq.groups import cluster_images

            report.stages["groups"] = cluster_images(cfg.store, config=cfg, overwrite=overwrite,
                                                     progress=progress)
        e = cfg.export
        if e.out is not None and e.zarr:  # one Zarr store; per-image: one group per K
            ks = e.per_image
            if ks is None and cfg.per_image.enabled:
                ks = per_image_ks
            report.stages["export"] = export(cfg.store, e.out, zarr=True, per_image=ks,
                                             overwrite=overwrite, config=cfg, progress=progress)
        elif e.out is not None:
            to_files = functools.partial(
                export, cfg.store, format=e.format, dither=e.dither, png_level=e.png_level,
                quality=e.quality, overwrite=overwrite, config=cfg, progress=progress)
            if cfg.per_image.enabled and cfg.per_image.quality is not None:  # one K: OUT
                report.stages["export"] = to_files(e.out, per_image=per_image_ks[0])
            elif cfg.per_image.enabled:  # one folder per K: OUT/k2, OUT/k6, ...
                for k in cfg.per_image.colors:
                    report.stages[f"export k={k}"] = to_files(join(e.out, f"k{k}"), per_image=k)
            else:
                report.stages["export"] = to_files(e.out, per_image=e.per_image)
    if cfg.report.out is not None:
        from streamq.report import report as write_report

        report.stages["report"] = write_report(cfg.store, config=cfg)
    if below_min is not None:
        raise below_min
    return report
