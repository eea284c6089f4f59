"""Reading and checking a configuration: YAML loading, validation, environment overrides.

A :class:`~streamq.config.schema.StreamQConfig` (one section per stage, the keys in
:mod:`streamq.config.schema`) is read from YAML (``configs/*.yaml``), from a dict, or built
in Python; environment variables and command-line flags override single keys with dotted
names (``ingest.chunk_pixels``). Every key is checked once, here: an unknown key or a bad
value raises :class:`~streamq.errors.ConfigError` with a one-line message naming the key, the
value and what was expected (and the variable, for one from the environment).

**Environment.** ``STREAMQ_SECTION__KEY=VALUE`` sets any key (``STREAMQ_FIT__COLORS=32``,
``STREAMQ_STORAGE_OPTIONS__ENDPOINT_URL=http://...``; a top-level key without ``__``:
``STREAMQ_STORE``), the name in any case, the value read as YAML as in a config file (``true``,
``[2, 6, 30]``, ``null``). The order, later winning: defaults, the config file, the
environment, the flags (the dotted-key overrides of :func:`load_config` and of the library's
functions). A mapping given to :func:`parse_config` stands for a config file; a
:class:`StreamQConfig` built in Python is taken as it is. ``STREAMQ_SCHEDULER`` is the older
name of ``dask.scheduler`` and ranks below the config file, as it always has.

Why not donfig, which zarr brings (``ZARR_ASYNC__CONCURRENCY`` style), for this: its
``collect_env`` reads values with :func:`ast.literal_eval` (Python's ``True``/``None``, while
streamq's config files are YAML: ``true``/``null``), takes every ``STREAMQ_*`` variable as a
key (``STREAMQ_SCHEDULER`` and variables of other tools would become unknown keys) and returns
the merged keys without the variable each came from, so a bad value could not be named by its
variable; and its :class:`~donfig.Config` is a process-wide mutable configuration with its own
search path of YAML files, a second source of truth beside these frozen dataclasses. The names
follow its convention (``PREFIX_SECTION__KEY``), so they read like zarr's and Dask's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from streamq import redact
from streamq.config.schema import StreamQConfig
from streamq.errors import ConfigError
from streamq.fs import looks_like_url

__all__ = ["ENV_PREFIX", "describe", "differences", "environment_overrides", "fingerprint",
           "load_config", "parse_config", "replaced", "to_dict"]


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is dict:
        return "a mapping of option names to plain values (text, numbers, true/false, lists)"
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return "a list of " + _type_name(items[0]).replace("an integer", "integers")
        return "a list of " + str(len(items)) + " values"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(tp: Any, value: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value)
            except TypeError:
                pass
        raise TypeError
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError
    if origin is dict:  # plain JSON data, e.g. storage options
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise TypeError
        try:
            return json.loads(json.dumps(dict(value)))
        except (TypeError, ValueError):
            raise TypeError from None
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            if isinstance(value, int | str) and not isinstance(value, bool):
                value = [v for v in str(value).split(",") if v.strip()]  # "2,6,30" from a flag
            if not isinstance(value, list | tuple) or not value:
                raise TypeError
            return tuple(_coerce(args[0], int(v) if isinstance(v, str) and v.strip().isdigit() else v)
                         for v in value)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise TypeError
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def _shown(key: str, value: Any) -> str:
    """``value`` as an error message may show it: storage options only redacted."""
    if key.split(".")[0] not in ("storage_options", "source_options"):
        return repr(value)
    if isinstance(value, Mapping):
        return repr(redact.options(value))
    return f"of type {type(value).__name__} (not shown: it may hold credentials)"


def _parse_section(cls: type, data: Any, prefix: str, source: str) -> Any:
    where = f"{source}: " if source else ""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}key '{prefix.rstrip('.') or '(top level)'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}unknown key '{prefix}{unknown[0]}' (expected one of: {', '.join(sorted(fields))})"
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + name
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[name] = _parse_section(tp, value, key + ".", source)
            continue
        try:
            coerced = _coerce(tp, value)
        except TypeError:
            raise ConfigError(f"{where}key '{key}' has value {_shown(key, value)}, expected "
                              f"{_type_name(tp)}") from None
        check = fields[name].metadata.get("check")
        if coerced is not None and check is not None:
            problem = check(coerced)
            if problem:
                raise ConfigError(f"{where}key '{key}' has value {_shown(key, value)}, expected {problem}")
        values[name] = coerced
    return cls(**values)


ENV_PREFIX = "STREAMQ_"
_TOP_LEVEL = ("store", "storage_options", "source_options")  # keys outside any section


def environment_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keys set by ``STREAMQ_SECTION__KEY`` variables of ``environ`` (default
    ``os.environ``), as nested mappings, each checked on its own.

    Raises
    ------
    ConfigError
        Naming the variable, for a key that does not exist, a value that is not YAML or
        one that the key does not take.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        dotted = key.replace("__", ".")
        if "__" not in key and key not in _TOP_LEVEL:
            continue  # STREAMQ_SCHEDULER (see parse_config), and variables of tools and tests
        if not environ[name].strip():
            continue  # set to nothing: not set
        where = f"environment variable {name}"
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            raise ConfigError(f"{where} has value {_shown(dotted, environ[name])}, which is not a "
                              "YAML value (as in a config file: 32, true, [2, 6, 30], "
                              "'s3://b/x')") from None
        one: dict[str, Any] = {}
        _set_dotted(one, dotted, value)
        _parse_section(StreamQConfig, one, "", where)  # the key exists and takes the value
        _set_dotted(out, dotted, value)
    return out


def _merged(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``overrides`` laid over it, key by key into nested mappings (a section
    given as a dataclass is taken apart first)."""
    out = dict(data)
    for key, value in overrides.items():
        below = out.get(key)
        if dataclasses.is_dataclass(below) and not isinstance(below, type):
            below = to_dict(below)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = _merged(below, value)
        elif isinstance(value, Mapping) and below is not None:
            continue  # not a mapping: left for its own one-line error
        else:
            out[key] = value
    return out


def parse_config(data: Mapping[str, Any] | StreamQConfig | None, source: str = "", *,
                 environment: bool = True) -> StreamQConfig:
    """Validate a mapping (for example parsed YAML) and return a :class:`StreamQConfig`.

    With ``environment`` the ``STREAMQ_SECTION__KEY`` variables override its keys (see the
    module's doc); a :class:`StreamQConfig` is returned as it is.
    """
    if isinstance(data, StreamQConfig):
        return data
    if environment:
        overrides = environment_overrides()
        if overrides:
            if data is not None and not isinstance(data, Mapping):
                _parse_section(StreamQConfig, data, "", source)  # its own one-line error
            data = _merged(data or {}, overrides)
    cfg = _parse_section(StreamQConfig, data, "", source)
    redact.remember(cfg.storage_options)  # kept out of every message from now on
    redact.remember(cfg.source_options)
    env = os.environ.get("STREAMQ_SCHEDULER")
    if env and (data is None or "scheduler" not in (data.get("dask") or {})):
        cfg = dataclasses.replace(cfg, dask=dataclasses.replace(cfg.dask, scheduler=env))
    return cfg


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> StreamQConfig:
    """Read a YAML file (or start from defaults) and apply dotted-key overrides.

    Relative paths inside the file (``store``, ``ingest.source``, ...) are resolved against
    the file's folder, so a config works from any working directory.
    """
    data: dict[str, Any] = {}
    source = ""
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {source} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML{at}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping of keys at the top level")
        data = loaded or {}
        base = p.resolve().parent
        for dotted in ("store", "ingest.source", "export.out", "report.out", "quantize.palette",
                       "fit.fixed_colors", "per_image.fixed_colors"):
            section, _, key = dotted.rpartition(".")
            node = data.get(section) if section else data
            if isinstance(node, dict) and isinstance(node.get(key), str):
                node[key] = _resolve(node[key], base)
    cfg = parse_config(data, source)
    return replaced(cfg, overrides) if overrides else cfg


def _resolve(value: str, base: Path) -> str:
    if looks_like_url(value) or os.path.isabs(value):
        return value
    return str(base / os.path.expanduser(value)) if not value.startswith("~") else os.path.expanduser(value)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config object (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def fingerprint(obj: Any) -> str:
    """Stable short hash of a config section or any JSON-ready value."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Any = ()) -> str:
    """``key=old (now new)`` for every key that differs (except ``ignore``), for refusals."""
    diff = [f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in sorted(new)
            if k not in ignore and old.get(k) != new.get(k)]
    return ", ".join(diff) or "other data"


def describe() -> list[tuple[str, Any, str]]:
    """Every key with its default and help text, for docs and ``configs/default.yaml``."""
    rows: list[tuple[str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + f.name + ".")
            else:
                default = f.default_factory() if callable(f.default_factory) else f.default
                rows.append((prefix + f.name, default, f.metadata.get("doc", "")))

    walk(StreamQConfig, "")
    return rows


def replaced(cfg: StreamQConfig, dotted: Mapping[str, Any]) -> StreamQConfig:
    """``cfg`` with dotted keys (``{"ingest.codec": "lz4"}``) replaced (``None`` ignored),
    checked again."""
    data = to_dict(cfg)
    for key, value in dotted.items():
        if value is None:
            continue
        _set_dotted(data, key.replace("__", "."), value)
    return parse_config(data, environment=False)
