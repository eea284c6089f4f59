"""Palette files: every format written then read back, images and stores as sources, and one
clear line for every bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from streamq.cli.main import cli
from streamq.errors import ConfigError
from streamq.palettes import encode_palette, read_palette, write_palette


def _colors(k: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(k, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".gpl", ".act", ".json", ".hex", ".txt"])
@pytest.mark.parametrize("k", [1, 37, 256])
def test_every_format_round_trips(tmp_path, ext, k):
    colors = _colors(k)
    colors[min(5, k - 1)] = colors[0]  # a repeated colour keeps its place
    path = tmp_path / f"p{ext}"
    fmt = write_palette(path, colors, name="Brand  colours\nof 2026")
    pal = read_palette(path)
    np.testing.assert_array_equal(pal.colors, colors)
    assert pal.colors.dtype == np.uint8
    assert pal.source["kind"] == fmt
    assert pal.source["n_colors"] == k
    if ext in (".gpl", ".json"):  # the formats that carry a name
        assert pal.name == ("Brand colours of 2026" if ext == ".gpl" else "Brand  colours\nof 2026")
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed


def test_large_palettes_round_trip_where_the_format_allows(tmp_path):
    colors = _colors(65_536, seed=4)
    for ext in (".gpl", ".json", ".hex"):
        write_palette(tmp_path / f"big{ext}", colors)
        np.testing.assert_array_equal(read_palette(tmp_path / f"big{ext}").colors, colors)
    with pytest.raises(ConfigError, match=r"big\.act.*at most 256 colours.*has 257"):
        write_palette(tmp_path / "big.act", colors[:257])
    assert not (tmp_path / "big.act").exists()


def test_act_without_count_is_256_colours_and_the_count_trailer_is_honoured(tmp_path):
    colors = _colors(256)
    (tmp_path / "plain.act").write_bytes(colors.tobytes())
    np.testing.assert_array_equal(read_palette(tmp_path / "plain.act").colors, colors)
    (tmp_path / "13.act").write_bytes(colors.tobytes() + (13).to_bytes(2, "big") + b"\x00\x02")
    np.testing.assert_array_equal(read_palette(tmp_path / "13.act").colors, colors[:13])
    data = encode_palette("act", colors[:13])
    assert len(data) == 772
    assert data[768:] == b"\x00\x0d\xff\xff"


def test_json_and_text_variants(tmp_path):
    want = np.array([[26, 43, 60], [255, 255, 255], [0, 128, 1]], np.uint8)
    variants = {
        "hex.json": ["#1a2b3c", "FFFFFF", "#008001"],
        "triples.json": [[26, 43, 60], [255, 255, 255], [0, 128, 1]],
        "mixed.json": {"name": "mixed", "colors": ["#1A2B3C", [255, 255, 255], "008001"]},
    }
    for name, doc in variants.items():
        (tmp_path / name).write_text(json.dumps(doc))
        np.testing.assert_array_equal(read_palette(tmp_path / name).colors, want, err_msg=name)
    (tmp_path / "lospec.hex").write_text("; from lospec\n1a2b3c\n\n#ffffff  white\n// last\n008001\n")
    np.testing.assert_array_equal(read_palette(tmp_path / "lospec.hex").colors, want)
    (tmp_path / "g.gpl").write_text("GIMP Palette\nName: G\nColumns: 3\n# comment\n"
                                    " 26  43  60\tdark\n255 255 255 White Snow\n  0 128   1\n")
    pal = read_palette(tmp_path / "g.gpl")
    np.testing.assert_array_equal(pal.colors, want)
    assert pal.name == "G"


def test_a_palette_image_gives_the_entries_its_pixels_use_in_palette_order(tmp_path):
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("flower.jpg")[100:180, 200:300]
    im = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=24)
    idx = np.asarray(im).copy()
    idx[idx == 3] = 4  # entry 3 no longer used
    entries = np.asarray(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
    assert len(entries) == 24
    out = Image.fromarray(idx, mode="P")
    out.putpalette(entries.ravel().tolist())
    out.save(tmp_path / "p.png")
    pal = read_palette(tmp_path / "p.png")
    used = np.unique(idx)
    assert 3 not in used
    assert len(used) >= 20
    np.testing.assert_array_equal(pal.colors, entries[used])
    assert pal.source["image_palette"] is True
    assert pal.source["palette_entries"] == 24


def test_an_rgb_image_gives_its_distinct_colours_up_to_65536(tmp_path):
    from sklearn.datasets import load_sample_image

    flower = load_sample_image("flower.jpg")  # 62,941 distinct colours
    Image.fromarray(flower).save(tmp_path / "flower.png")
    pal = read_palette(tmp_path / "flower.png")
    codes = np.unique((flower.reshape(-1, 3).astype(np.int64) * [65536, 256, 1]).sum(1))
    want = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1)
    np.testing.assert_array_equal(pal.colors, want)  # sorted by (r, g, b)
    assert pal.source["image_palette"] is False
    Image.fromarray(load_sample_image("china.jpg")).save(tmp_path / "china.png")
    with pytest.raises(ConfigError) as err:
        read_palette(tmp_path / "china.png")
    assert str(err.value) == (f"palette {tmp_path / 'china.png'}: an image of 96,615 distinct "
                              "colours, expected at most 65,536 (a palette image, or a palette "
                              "file)")


def _bad(tmp_path, name: str, data: bytes | str) -> str:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(ConfigError) as err:
        read_palette(p)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(p) in msg
    return msg


def test_bad_palette_files_are_one_line_errors(tmp_path):
    assert "starting with the line 'GIMP Palette', got 'JASC-PAL'" in _bad(
        tmp_path, "a.gpl", "JASC-PAL\n0100\n")
    assert "line 4: expected a colour as three integers 0..255" in _bad(
        tmp_path, "b.gpl", "GIMP Palette\nName: x\n0 0 0\n12 256 0 too red\n")
    assert "line 3: expected a colour" in _bad(tmp_path, "c.gpl", "GIMP Palette\n0 0 0\n1 2\n")
    assert "Channels 'RGBA', expected RGB" in _bad(
        tmp_path, "d.gpl", "GIMP Palette\nChannels: RGBA\n0 0 0 255\n")
    assert "no colours (an empty palette)" in _bad(tmp_path, "e.gpl", "GIMP Palette\nName: e\n#\n")
    assert "100 bytes, expected an Adobe colour table of 768 bytes" in _bad(
        tmp_path, "f.act", bytes(100))
    assert "colour count 0 in its last 4 bytes, expected 1 to 256" in _bad(
        tmp_path, "g.act", bytes(768) + b"\x00\x00\xff\xff")
    assert "colour count 300" in _bad(tmp_path, "h.act", bytes(768) + b"\x01\x2c\xff\xff")
    assert "not valid JSON" in _bad(tmp_path, "i.json", '["#000000",')
    assert 'colour 1 is "#12345", expected "#rrggbb", "#rrggbbaa", [r, g, b] or [r, g, b, a]' in _bad(
        tmp_path, "j.json", '["#000000", "#12345"]')
    assert 'colour 0 is "#1234567"' in _bad(tmp_path, "j2.json", '["#1234567"]')
    assert "colour 0 is [1, 2, 3, 4, 5]" in _bad(tmp_path, "j3.json", "[[1, 2, 3, 4, 5]]")
    assert "colour 0 is [0, 0, 256]" in _bad(tmp_path, "k.json", "[[0, 0, 256]]")
    assert "colour 0 is [0.5, 0, 0]" in _bad(tmp_path, "l.json", "[[0.5, 0, 0]]")
    assert "expected a JSON list of colours" in _bad(tmp_path, "m.json", '{"colours": []}')
    assert "no colours (an empty palette)" in _bad(tmp_path, "n.json", "[]")
    assert "65,537 colours, expected at most 65,536" in _bad(
        tmp_path, "o.json", json.dumps(["#000000"] * 65_537))
    assert "line 2: expected a colour as #rrggbb or rrggbb (#rrggbbaa with alpha), got 'red'" in _bad(
        tmp_path, "p.hex", "ffffff\nred\n")
    assert "not UTF-8 text" in _bad(tmp_path, "q.txt", b"\xff\xfe\x00z")
    assert "expected a palette file (.gpl, .act, .json, .hex or .txt), an image or a streamq " \
           "store; as an image: not an image Pillow can identify" in _bad(tmp_path, "r.pal", "x")
    with pytest.raises(ConfigError, match="no such file"):
        read_palette(tmp_path / "missing.gpl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=r"folder: .*not a streamq store"):
        read_palette(tmp_path / "folder")
    with pytest.raises(ConfigError, match=r"x\.pal: extension '\.pal', expected \.gpl, \.act"):
        write_palette(tmp_path / "x.pal", _colors(3))


def test_a_store_without_a_fit_is_refused(faces_store):
    with pytest.raises(ConfigError, match="the store has no fitted palette .*run `streamq fit`"):
        read_palette(faces_store)


def test_cli_bad_palette_is_one_line_on_stderr(faces_store, tmp_path):
    bad = tmp_path / "bad.gpl"
    bad.write_text("GIMP Palette\n300 0 0\n")
    res = CliRunner().invoke(cli, ["quantize", faces_store, "--palette", str(bad),
                                   "--scheduler", "sync"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()  # CliRunner mixes stderr in
    assert lines == [f"error: palette {bad}, line 2: expected a colour as three integers 0..255 "
                     "and an optional name, got '300 0 0'"]
    res = CliRunner().invoke(cli, ["quantize", faces_store, "--color-space", "oklab"])
    assert res.exit_code == 2
    assert "--color-space goes with --palette SRC" in res.output


def test_colours_with_alpha(tmp_path):
    """``#rrggbbaa`` and ``[r, g, b, a]`` give colours their alpha (255 where a colour gives
    none) and the source an ``alpha_sha256``; a palette without alpha has neither."""
    p = tmp_path / "a.json"
    p.write_text('["#11223380", [1, 2, 3, 4], "#ffffff"]')
    pal = read_palette(p)
    np.testing.assert_array_equal(pal.colors, [[0x11, 0x22, 0x33], [1, 2, 3], [255, 255, 255]])
    np.testing.assert_array_equal(pal.alpha, [0x80, 4, 255])
    assert "alpha_sha256" in pal.source
    h = tmp_path / "a.hex"
    h.write_text("#aabbccdd glass\n001122\n")
    pal = read_palette(h)
    np.testing.assert_array_equal(pal.colors, [[0xAA, 0xBB, 0xCC], [0, 0x11, 0x22]])
    np.testing.assert_array_equal(pal.alpha, [0xDD, 255])
    q = tmp_path / "b.json"
    q.write_text('["#112233"]')
    assert read_palette(q).alpha is None
    assert "alpha_sha256" not in read_palette(q).source


def test_repeated_colours_warn_counting_alpha(tmp_path, caplog):
    """A colour repeated with another alpha is another entry (no warning); the same colour with
    the same alpha is a repeat (one warning naming how many)."""
    p = tmp_path / "a.json"
    p.write_text('["#ff000080", "#ff0000ff", "#00ff00"]')
    with caplog.at_level("WARNING", logger="streamq.palettes"):
        read_palette(p)
    assert not [r for r in caplog.records if "repeat" in r.getMessage()]
    p.write_text('["#ff000080", "#ff000080", "#ff0000"]')
    with caplog.at_level("WARNING", logger="streamq.palettes"):
        read_palette(p)
    warned = [r.getMessage() for r in caplog.records if "repeat" in r.getMessage()]
    assert len(warned) == 1
    assert "1 of its 3 colours repeat" in warned[0]
