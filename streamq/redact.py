"""Keeping credentials out of everything streamq writes or says.

Storage options (``--storage-option secret=...``, key ``storage_options`` of a config) and the
``user:password@`` part of URLs may hold credentials. Nothing streamq writes (the lock file,
store attributes, checkpoints, reports, export manifests, logs) and no message it prints may
hold them; every place that writes or shows a command line, an option mapping, a URL or the
text of a foreign exception passes it through this module first:

* :func:`options`: an option mapping with every value replaced by ``***`` except the few
  that say *where* rather than *who* (:data:`PUBLIC_OPTIONS`; URLs without their userinfo);
* :func:`url`: any ``scheme://user:password@host`` in a text becomes ``scheme://***@host``;
* :func:`argv` / :func:`command`: a command line (a list, or one line of text) with the values
  of ``--storage-option`` and ``--source-option`` redacted like :func:`options` and URLs like
  :func:`url`;
* :func:`text`: free text (an exception message) with URL userinfo and every credential this
  process has seen in storage options (:func:`remember`) replaced by ``***``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["OPTION_FLAGS", "PUBLIC_OPTIONS", "PUBLIC_VALUES", "REDACTED", "argv", "command", "options", "remember",
           "text", "url"]

REDACTED = "***"

#: Storage options whose values are kept when shown: they name a place or a behaviour, never
#: a credential (nested mappings such as ``client_kwargs`` follow the same rule per key).
PUBLIC_OPTIONS = frozenset({
    "endpoint_url", "anon", "region_name", "use_ssl", "requester_pays", "version_aware",
    "default_block_size", "default_cache_type", "default_fill_cache", "cache_regions",
    "max_concurrency", "fixed_upload_size", "connect_timeout", "read_timeout", "retries",
    "max_attempts", "mode", "signature_version", "addressing_style", "profile", "project",
})
#: Values of other options that name a way to authenticate, not a credential (gcsfs's
#: ``token="anon"``, ...): shown and never scrubbed from text.
PUBLIC_VALUES = {"token": frozenset({"anon", "google_default", "cache", "cloud", "browser"})}

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#@'\"]+@")
_MIN_SECRET = 4  # shorter values are not scrubbed from free text (they would mangle it)
_seen: set[str] = set()
_seen_guard = threading.Lock()


def url(value: str) -> str:
    """``value`` with the userinfo of every URL in it (``user:password@``) replaced by ``***``."""
    return _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", value)


def _public(key: str, value: Any) -> bool:
    return key in PUBLIC_OPTIONS or (isinstance(value, str)
                                     and value in PUBLIC_VALUES.get(key, frozenset()))


def _value(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return options(value)
    if _public(key, value):
        return url(value) if isinstance(value, str) else value
    return REDACTED


def options(opts: Mapping[str, Any] | Any) -> Any:
    """A copy of storage options that is safe to show: keys kept, values of keys outside
    :data:`PUBLIC_OPTIONS` (or of a :data:`PUBLIC_VALUES` value) replaced by ``***`` (nested
    mappings alike, URLs without userinfo).

    Anything but a mapping becomes ``***``.
    """
    if not isinstance(opts, Mapping):
        return REDACTED
    return {str(k): _value(str(k), v) for k, v in opts.items()}


def remember(opts: Mapping[str, Any] | None) -> None:
    """Note the credentials in ``opts`` so that :func:`text` scrubs them from any message.

    Every value outside :data:`PUBLIC_OPTIONS` (at any depth) counts, as does the password of
    a URL among the public ones.
    """
    found: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v, key)
        elif isinstance(node, str):
            if not _public(key, node):
                found.append(node)
            for m in re.finditer(r"(?i)[a-z][a-z0-9+.-]*://([^/\s?#@'\"]+)@", node):
                found.extend(p for p in m.group(1).split(":") if p)

    walk(opts or {}, "")
    keep = {s for s in found if len(s) >= _MIN_SECRET}
    if keep:
        with _seen_guard:
            _seen.update(keep)


def text(value: str, extra: Iterable[str] = ()) -> str:
    """``value`` with URL userinfo and every remembered (or ``extra``) credential replaced."""
    out = url(value)
    with _seen_guard:
        secrets = sorted(_seen | {s for s in extra if len(s) >= _MIN_SECRET}, key=len,
                         reverse=True)
    for s in secrets:
        if s in out:
            out = out.replace(s, REDACTED)
    return out


#: Flags whose values are storage options (``KEY=VALUE``).
OPTION_FLAGS = ("--storage-option", "--source-option")


def _storage_item(item: str) -> str:
    """One ``KEY=VALUE`` of ``--storage-option``/``--source-option``, its value redacted
    unless public."""
    key, sep, value = item.partition("=")
    if not sep:
        return REDACTED  # not KEY=VALUE: the whole of it may be a credential
    leaf = key.strip().rsplit(".", 1)[-1]
    return f"{key}={url(value) if leaf in PUBLIC_OPTIONS else REDACTED}"


def argv(parts: Sequence[str]) -> list[str]:
    """A command line safe to record or show: ``--storage-option`` and ``--source-option``
    values redacted (see :func:`options`), URL userinfo and remembered credentials removed
    from every argument."""
    out: list[str] = []
    after_flag = False
    for part in parts:
        flag = part.split("=", 1)[0]
        if after_flag:
            out.append(_storage_item(part))
            after_flag = False
        elif part in OPTION_FLAGS:
            out.append(part)
            after_flag = True
        elif flag in OPTION_FLAGS and "=" in part:
            out.append(flag + "=" + _storage_item(part.split("=", 1)[1]))
        else:
            out.append(text(part))
    return out


_FLAG_VALUE = re.compile(r"(--(?:storage|source)-option(?:=|\s+))('[^']*'?|\"[^\"]*\"?|\S+)")


def command(line: str) -> str:
    """One line of command text (as a lock file records it) redacted like :func:`argv`.

    Also for text written by others (an older lock file): quoting that does not parse, or a
    line cut short, still loses every ``--storage-option`` value.
    """

    def one(m: re.Match[str]) -> str:
        value = m.group(2)
        quote = value[:1] if value[:1] in "'\"" else ""
        inner = value[len(quote):]
        if quote and inner.endswith(quote):
            inner = inner[:-1]
        return m.group(1) + quote + _storage_item(inner) + (quote if quote else "")

    return text(_FLAG_VALUE.sub(one, line))
