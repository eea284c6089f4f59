"""Palettes that travel: read one from a file, an image or another store; write one to a file.

:func:`read_palette` takes, by the file's extension:

* ``.gpl`` (GIMP): the line ``GIMP Palette``, optional ``Name:``, ``Columns:`` and ``#``
  comment lines, then one colour a line: three integers 0..255 and an optional name. A
  ``Channels: RGBA`` palette is refused (give alpha in ``.json`` or ``.hex``).
* ``.act`` (Adobe colour table): 256 RGB triples (768 bytes), optionally followed by a
  big-endian 2-byte count of the colours in use and a 2-byte transparent index (772 bytes;
  the index is ignored). Only the first ``count`` colours are read.
* ``.json``: a list of ``"#rrggbb"`` strings (the ``#`` is optional) or ``[r, g, b]``
  triples of integers, or an object ``{"colors": [...], "name": "..."}``; ``"#rrggbbaa"``
  and ``[r, g, b, a]`` give a colour its (straight) alpha.
* ``.hex`` / ``.txt``: one ``#rrggbb`` or ``rrggbb`` (``#rrggbbaa`` with alpha) a line
  (Lospec's ``.hex``); anything after the colour is a name; blank lines and lines starting
  with ``;`` or ``//`` are skipped.
* any other file: an image. A palette image (mode ``P``) gives the entries of its palette
  that its pixels use, in palette order (unused entries, such as a GIF's padding, are left
  out), with their ``tRNS`` alpha when it has one; any other image gives its distinct
  colours, decoded as ingest decodes them
  (:mod:`streamq.decode`: transparency composited on ``background``), in ``(r, g, b)``
  order, and more than 65,536 of them is an error.
* a folder holding a streamq store, or a URL (``s3://...``) without one of the palette file
  extensions above: that store's fitted palette,
  with its float centres and colour space, so that a collection quantized with it gets the
  labels that store's own quantize gives.

Palette files may also be at a URL (``s3://bucket/brand.gpl``); images are local files.

A palette with alpha (:attr:`Palette.alpha`, and ``alpha_sha256`` in its source) is used
with alpha only on a collection with alpha (``quantize --palette``); an opaque collection
takes its colours as before.

The colours keep their order: label ``i`` is the file's colour ``i``. A colour that repeats
an earlier one stays in place (so the numbering still matches the file) but is never chosen:
ties go to the lowest index, so the first of equal colours takes every pixel; the log says
how many repeat. Empty palettes, more than 65,536 colours, values outside 0..255, files of
the wrong size and lines that are not colours are one-line errors naming the file (and the
line) and what was expected.

:func:`write_palette` writes ``.gpl``, ``.act`` (at most 256 colours), ``.json`` or
``.hex``/``.txt`` by the extension of its path, atomically (a temporary file renamed, or
one PUT at a URL). A file holds the uint8 colours only: the float centres of a fit travel
with its store (give the store itself as the source).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamq.describe import describe_source
from streamq.errors import ConfigError

__all__ = ["FORMATS", "MAX_COLORS", "Palette", "check_palette_path", "describe_source",
           "encode_palette", "palette_format", "read_palette", "write_palette"]

log = logging.getLogger(__name__)

MAX_COLORS = 65_536
#: File formats by extension (anything else is read as an image and cannot be written).
FORMATS = {".gpl": "gpl", ".act": "act", ".json": "json", ".hex": "text", ".txt": "text"}
_HEX = re.compile(r"#?([0-9a-fA-F]{6}(?:[0-9a-fA-F]{2})?)")  # rrggbb, or rrggbbaa
_EXPECTED = ("expected a palette file (.gpl, .act, .json, .hex or .txt), an image or a "
             "streamq store")


@dataclass(frozen=True)
class Palette:
    """Colours read from a palette source, in the source's order."""

    colors: np.ndarray  # (K, 3) uint8 sRGB (straight, not premultiplied)
    source: dict[str, Any] = field(default_factory=dict)  # where from (JSON-ready)
    centers: np.ndarray | None = None  # a store's float centres, in ``color_space``
    color_space: str | None = None  # a store's fit's colour space
    alpha: np.ndarray | None = None  # (K,) uint8 alpha of each colour, when the source has it

    @property
    def k(self) -> int:
        return len(self.colors)

    @property
    def name(self) -> str | None:
        return self.source.get("name")

    def describe(self) -> str:
        return describe_source(self.source)


def colors_sha256(colors: np.ndarray) -> str:
    """The identity of a list of colours: SHA-256 of their uint8 bytes, in order."""
    return hashlib.sha256(np.ascontiguousarray(colors, dtype=np.uint8).tobytes()).hexdigest()


# -- reading -----------------------------------------------------------------------------------
def read_palette(src: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                 background: tuple[int, int, int] = (255, 255, 255),
                 max_pixels: int = 178_956_970) -> Palette:
    """The palette of ``src`` (see the module docstring for what each kind of source gives).

    ``storage_options`` reach a store at a URL; ``background`` and ``max_pixels`` are the
    decoding rules of a non-palette image (as ingest's).

    Raises
    ------
    ConfigError
        One line naming ``src`` and what was expected.
    """
    from streamq.fs import location, looks_like_url

    text = os.fspath(src)
    fmt = FORMATS.get(os.path.splitext(text.rstrip("/"))[1].lower())
    url = looks_like_url(text)
    if (url and fmt is None) or os.path.isdir(text):
        return _read_store(text, storage_options)
    if not url and not os.path.exists(text):
        raise ConfigError(f"palette {text}: no such file ({_EXPECTED})")
    if fmt is None:
        return _read_image(text, background, max_pixels)
    loc = location(text, storage_options)
    try:
        data = loc.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"palette {text}: no such file ({_EXPECTED})") from None
    except OSError as exc:
        raise ConfigError(f"palette {text}: cannot read it ({exc.strerror or exc})") from None
    reader = {"gpl": _parse_gpl, "act": _parse_act, "json": _parse_json, "text": _parse_text}[fmt]
    colors, name = reader(text, data)
    stem = os.path.splitext(os.path.basename(text))[0]
    return _palette(text, colors, {"kind": fmt, "path": loc.url,
                                   "name": name if name is not None else stem})


def _palette(src: str, colors: Any, source: dict[str, Any], centers: np.ndarray | None = None,
             color_space: str | None = None, alpha: np.ndarray | None = None) -> Palette:
    """Check the size of a list of colours and note its repeats; the :class:`Palette`.
    ``colors`` may be a list of ``[r, g, b]`` and ``[r, g, b, a]``: then the palette has
    alpha (255 where a colour gives none)."""
    if isinstance(colors, list) and any(len(c) == 4 for c in colors):
        alpha = np.asarray([c[3] if len(c) == 4 else 255 for c in colors], np.uint8)
        colors = [c[:3] for c in colors]
    arr = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    if not len(arr):
        raise ConfigError(f"palette {src}: no colours (an empty palette); expected 1 to "
                          f"{MAX_COLORS:,} colours")
    if len(arr) > MAX_COLORS:
        raise ConfigError(f"palette {src}: {len(arr):,} colours, expected at most {MAX_COLORS:,}")
    if arr.min() < 0 or arr.max() > 255:  # the parsers check; this guards the others
        raise ConfigError(f"palette {src}: a colour value outside 0..255")
    colors8 = arr.astype(np.uint8)
    n_distinct = len(np.unique(colors8, axis=0))
    if alpha is not None:  # entries with the same colour and another alpha are distinct
        rgba = np.column_stack([colors8, np.asarray(alpha, np.uint8).reshape(-1)])
        n_repeats = len(rgba) - len(np.unique(rgba, axis=0))
    else:
        n_repeats = len(colors8) - n_distinct
    if n_repeats:
        log.warning("palette %s: %d of its %d colours repeat an earlier one; only the first of "
                    "equal colours is ever used (ties go to the lowest index)", src,
                    n_repeats, len(colors8))
    source = {**source, "n_colors": len(colors8), "n_distinct": n_distinct,
              "sha256": colors_sha256(colors8)}
    if alpha is not None:  # only then: an opaque palette's source is as before
        alpha = np.asarray(alpha, np.uint8).reshape(-1)
        source["alpha_sha256"] = colors_sha256(alpha)
    return Palette(colors8, source, centers, color_space, alpha)


def _lines(src: str, data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"palette {src}: not UTF-8 text; {_EXPECTED}") from None
    return text.splitlines()


def _shown(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= 60 else line[:57] + "...")


def _parse_gpl(src: str, data: bytes) -> tuple[list[list[int]], str | None]:
    lines = _lines(src, data)
    first = next((n for n, line in enumerate(lines) if line.strip()), None)
    if first is None or lines[first].strip() != "GIMP Palette":
        got = _shown(lines[first]) if first is not None else "an empty file"
        raise ConfigError(f"palette {src}: expected a GIMP palette starting with the line "
                          f"'GIMP Palette', got {got}")
    colors: list[list[int]] = []
    name = None
    for n, line in enumerate(lines[first + 1:], start=first + 2):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key, sep, value = s.partition(":")
        if sep and key in ("Name", "Columns", "Channels"):
            if key == "Name":
                name = value.strip()
            elif key == "Channels" and value.strip().upper() != "RGB":
                raise ConfigError(f"palette {src}, line {n}: Channels {value.strip()!r}, "
                                  "expected RGB (give colours with alpha in .json or .hex)")
            continue
        parts = s.split(None, 3)
        try:
            rgb = [int(p) for p in parts[:3]]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ConfigError(f"palette {src}, line {n}: expected a colour as three integers "
                              f"0..255 and an optional name, got {_shown(s)}")
        colors.append(rgb)
    return colors, name


def _parse_act(src: str, data: bytes) -> tuple[list[list[int]], str | None]:
    if len(data) not in (768, 772):
        raise ConfigError(f"palette {src}: {len(data)} bytes, expected an Adobe colour table of "
                          "768 bytes (256 RGB triples) or 772 (with a colour count)")
    table = np.frombuffer(data[:768], dtype=np.uint8).reshape(256, 3)
    n = 256
    if len(data) == 772:
        n = int.from_bytes(data[768:770], "big")
        if not 1 <= n <= 256:
            raise ConfigError(f"palette {src}: colour count {n} in its last 4 bytes, expected "
                              "1 to 256")
    return table[:n].tolist(), None


def _hex_color(digits: str) -> list[int]:
    """``[r, g, b]`` of ``rrggbb``, ``[r, g, b, a]`` of ``rrggbbaa``."""
    return [int(digits[j:j + 2], 16) for j in range(0, len(digits), 2)]


def _json_color(src: str, i: int, value: Any) -> list[int]:
    if isinstance(value, str):
        m = _HEX.fullmatch(value.strip())
        if m:
            return _hex_color(m.group(1))
    elif (isinstance(value, list) and len(value) in (3, 4)
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return list(value)
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise ConfigError(f"palette {src}: colour {i} is {shown}, expected \"#rrggbb\", "
                      "\"#rrggbbaa\", [r, g, b] or [r, g, b, a] with integers 0..255")


def _parse_json(src: str, data: bytes) -> tuple[list[list[int]], str | None]:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"palette {src}: not valid JSON ({str(exc).splitlines()[0][:80]}); "
                          "expected a list of colours or {\"colors\": [...]}") from None
    name = None
    if isinstance(doc, dict):
        colors = doc.get("colors")
        name = doc.get("name") if isinstance(doc.get("name"), str) else None
    else:
        colors = doc
    if not isinstance(colors, list):
        raise ConfigError(f"palette {src}: expected a JSON list of colours or an object with a "
                          "list \"colors\"")
    return [_json_color(src, i, v) for i, v in enumerate(colors)], name


def _parse_text(src: str, data: bytes) -> tuple[list[list[int]], str | None]:
    colors = []
    for n, line in enumerate(_lines(src, data), start=1):
        s = line.strip()
        if not s or s.startswith((";", "//")):
            continue
        m = _HEX.fullmatch(s.split(None, 1)[0])
        if not m:
            raise ConfigError(f"palette {src}, line {n}: expected a colour as #rrggbb or "
                              f"rrggbb (#rrggbbaa with alpha), got {_shown(s)}")
        colors.append(_hex_color(m.group(1)))
    return colors, None


def _read_image(src: str, background: tuple[int, int, int], max_pixels: int) -> Palette:
    import warnings

    from PIL import Image

    from streamq.decode import decode_rgb
    from streamq.kmeans.codes import codes_to_rgb, distinct_colours

    source = {"kind": "image", "path": os.path.abspath(src),
              "name": os.path.splitext(os.path.basename(src))[0]}
    entries = used = alpha = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(src) as im:
                if im.mode == "P":
                    im.load()
                    entries = np.asarray(im.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
                    used = np.unique(np.asarray(im))
                    trns = im.info.get("transparency")
                    if trns is not None and len(entries):  # tRNS: the entries' alpha
                        alpha = np.full(len(entries), 255, np.uint8)
                        if isinstance(trns, bytes):
                            alpha[:min(len(trns), len(alpha))] = np.frombuffer(
                                trns, np.uint8)[:len(alpha)]
                        elif isinstance(trns, int) and trns < len(alpha):
                            alpha[trns] = 0
    except Exception:  # not an image (or not one Pillow reads): decode_rgb says why
        entries = None
    if entries is not None and used is not None and len(used) and used[-1] < len(entries):
        return _palette(src, entries[used], {**source, "image_palette": True,
                                             "palette_entries": len(entries)},
                        alpha=None if alpha is None else alpha[used])
    rgb = decode_rgb(src, max_pixels, background)
    if isinstance(rgb, str):
        raise ConfigError(f"palette {src}: {_EXPECTED}; as an image: {rgb}")
    codes, _ = distinct_colours(rgb.reshape(-1, 3))
    if len(codes) > MAX_COLORS:
        raise ConfigError(f"palette {src}: an image of {len(codes):,} distinct colours, expected "
                          f"at most {MAX_COLORS:,} (a palette image, or a palette file)")
    return _palette(src, codes_to_rgb(codes), {**source, "image_palette": False})


def _read_store(src: str, storage_options: dict[str, Any] | None) -> Palette:
    from streamq.errors import StoreLayoutError
    from streamq.store import Store
    from streamq.store.results import load_fit

    try:
        st = Store.open(src, storage_options=storage_options)
    except StoreLayoutError as exc:
        raise ConfigError(f"palette {src}: {exc}; {_EXPECTED}") from None
    sec = st.section("fit")
    if sec.get("state") != "complete":
        raise ConfigError(f"palette {src}: the store has no fitted palette (state: "
                          f"{sec.get('state') or 'none'}); run `streamq fit` on it first")
    res = load_fit(st.location)
    given = sec.get("palette_source")
    source = {"kind": "store", "path": st.path, "fit_fingerprint": sec.get("fingerprint"),
              "algorithm": res.algorithm, "color_space": res.color_space,
              # whose centres: the fit's floats, or (a given palette) its colours'
              "centers": given.get("centers", "palette") if given else "fit",
              **({"given": given} if given else {})}
    return _palette(src, res.palette, source, np.asarray(res.centers, np.float64),
                    res.color_space, res.alpha)  # with alpha: (K, 4) premultiplied centres


# -- writing -----------------------------------------------------------------------------------
def palette_format(path: str | os.PathLike[str]) -> str:
    """The format written to ``path``, by its extension (a one-line error for others)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"palette file {os.fspath(path)}: extension {ext or '(none)'!r}, "
                          "expected .gpl, .act, .json, .hex or .txt")
    return FORMATS[ext]


def check_palette_path(path: str | os.PathLike[str], k: int) -> str:
    """Check that a palette of ``k`` colours can be written to ``path`` (before a long job
    makes it); its format."""
    fmt = palette_format(path)
    if fmt == "act" and k > 256:
        raise ConfigError(f"palette file {os.fspath(path)}: an Adobe colour table holds at most "
                          f"256 colours, this palette has {k}; use .gpl, .json or .hex")
    return fmt


def encode_palette(fmt: str, colors: np.ndarray, name: str | None = None) -> bytes:
    """The bytes of a palette file of format ``fmt`` (see :data:`FORMATS`)."""
    rgb = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    hexes = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb.tolist()]
    if fmt == "gpl":
        clean = " ".join((name or "streamq palette").split())  # one line
        lines = ["GIMP Palette", f"Name: {clean}", f"Columns: {min(16, max(1, len(rgb)))}", "#"]
        lines += [f"{r:3d} {g:3d} {b:3d}\t{h}" for (r, g, b), h in zip(rgb.tolist(), hexes,
                                                                       strict=True)]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "act":
        table = np.zeros((256, 3), np.uint8)
        table[:len(rgb)] = rgb
        return table.tobytes() + len(rgb).to_bytes(2, "big") + b"\xff\xff"
    if fmt == "json":
        return (json.dumps({"name": name, "colors": hexes}, indent=1) + "\n").encode()
    if fmt == "text":
        return ("\n".join(h[1:] for h in hexes) + "\n").encode()
    raise ValueError(f"unknown palette format {fmt!r}")


def write_palette(path: str | os.PathLike[str], colors: np.ndarray, *, name: str | None = None,
                  storage_options: dict[str, Any] | None = None) -> str:
    """Write ``colors`` (``(K, 3)`` uint8) to ``path`` in the format of its extension
    (``.gpl``, ``.act``, ``.json``, ``.hex``/``.txt``), atomically; returns the format.

    ``path`` may be a URL (``s3://...``, with ``storage_options``).
    """
    from streamq.fs import location

    rgb = np.asarray(colors)
    if rgb.ndim != 2 or rgb.shape[1] != 3 or not 1 <= len(rgb) <= MAX_COLORS:
        raise ConfigError(f"palette file {os.fspath(path)}: expected 1 to {MAX_COLORS:,} RGB "
                          f"colours, got an array of shape {rgb.shape}")
    fmt = check_palette_path(path, len(rgb))
    location(path, storage_options).write_bytes(encode_palette(fmt, rgb, name))
    return fmt
