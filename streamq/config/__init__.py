"""Configuration: frozen per-stage dataclasses, YAML loading and validation.

A configuration is a :class:`StreamQConfig` made of one section per stage: the keys, their
types, defaults, checks and help texts are :mod:`streamq.config.schema`; reading one from
YAML, a mapping or the environment, and checking every key once with a one-line
:class:`~streamq.errors.ConfigError`, is :mod:`streamq.config.loading` (which imports the
schema, never the other way); :func:`replaced` gives a checked copy with dotted keys changed.
"""

# ENV_PREFIX, describe, differences and to_dict: importable from here as before, outside
# __all__ as before
from streamq.config.loading import ENV_PREFIX as ENV_PREFIX
from streamq.config.loading import describe as describe
from streamq.config.loading import differences as differences
from streamq.config.loading import (
    environment_overrides,
    fingerprint,
    load_config,
    parse_config,
    replaced,
)
from streamq.config.loading import to_dict as to_dict
from streamq.config.schema import (
    ClusterImagesConfig,
    DaskConfig,
    ExportConfig,
    FitConfig,
    IngestConfig,
    LockConfig,
    PerImageConfig,
    QuantizeConfig,
    ReportConfig,
    RetryConfig,
    StreamQConfig,
)

__all__ = [
    "ClusterImagesConfig",
    "DaskConfig",
    "ExportConfig",
    "FitConfig",
    "IngestConfig",
    "LockConfig",
    "PerImageConfig",
    "QuantizeConfig",
    "ReportConfig",
    "RetryConfig",
    "StreamQConfig",
    "environment_overrides",
    "fingerprint",
    "load_config",
    "parse_config",
    "replaced",
]
