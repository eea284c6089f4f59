"""File names that are not UTF-8: stored reversibly, read back, exported under valid names."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from conftest import pillow_rgb
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import streamq
from streamq.names import output_name, source_name, stored_name

# (bytes of a relative path, its stored form, the name export writes)
NAMES = [
    (b"Jos\xe9/caf\xe9.png", "Jos\\xe9/caf\\xe9.png", "Jos%E9/caf%E9.png"),  # Latin-1 bytes
    (b"Jos\xe9/plain.png", "Jos\\xe9/plain.png", "Jos%E9/plain.png"),
    (b"Z\xc3\xbcrich/ok.png", "Z\u00fcrich/ok.png", "Z\u00fcrich/ok.png"),  # valid UTF-8: as is
    (b"Z\xc3\xbcrich/back\\xe9.png", "Z\u00fcrich/back\\\\xe9.png", None),  # a literal backslash
]


def _image(path: bytes, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (12 + seed, 17, 3), dtype=np.uint8)).save(
        os.fsdecode(path), format="PNG")


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory) -> bytes:
    root = os.fsencode(tmp_path_factory.mktemp("names"))
    try:
        os.makedirs(os.path.join(root, b"Jos\xe9"))
    except OSError as exc:  # e.g. a filesystem that only takes UTF-8 names: nothing to test
        pytest.skip(f"this filesystem refuses a non-UTF-8 name: {exc}")
    os.makedirs(os.path.join(root, "Zürich".encode()))
    for seed, (rel, _, _) in enumerate(NAMES):
        _image(os.path.join(root, rel), seed)
    with open(os.path.join(root, b"bad\xff.png"), "wb") as fh:  # a bad input with such a name
        fh.write(b"not an image")
    return root


def test_non_utf8_names_are_stored_read_and_exported(odd_names, tmp_path, cluster_address):
    store = str(tmp_path / "s.zarr")
    summary = streamq.ingest(os.fsdecode(odd_names), store, scheduler=cluster_address,
                             progress=False)
    assert summary.status == "ingested"
    coll = streamq.open_store(store)
    assert coll.paths == sorted(s for _, s, _ in NAMES)
    assert [(s.path, s.reason) for s in coll.skipped] == [
        ("bad\\xff.png", "not an image Pillow can identify")]
    assert "bad\\xff.png (not an image" in str(summary)
    for i, name in enumerate(coll.paths):
        rel = next(r for r, s, _ in NAMES if s == name)
        assert os.fsencode(source_name(name)) == rel  # the stored form reads back exactly
        np.testing.assert_array_equal(coll.read(i), pillow_rgb(os.path.join(odd_names, rel)))
    assert coll.labels[coll.paths.index("Jos\\xe9/caf\\xe9.png")] == "Jos\\xe9"
    again = streamq.ingest(os.fsdecode(odd_names), store, scheduler="sync", progress=False)
    assert again.status == "already complete"  # the source fingerprint takes such names

    streamq.fit(store, colors=3, algorithm="lloyd", n_init=1, max_iter=20, scheduler="sync")
    streamq.quantize(store, scheduler="sync", progress=False)
    out = tmp_path / "out"
    streamq.export(store, str(out), scheduler="sync", progress=False)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    expected = {s: o for _, s, o in NAMES}
    expected["Z\u00fcrich/back\\\\xe9.png"] = None  # a backslash splits a name, as it always did
    assert sorted(o for o in expected.values() if o) == [w for w in written if "back" not in w]
    assert "Z\u00fcrich/back/xe9.png" in written
    g = zarr.open_group(store, mode="r")
    palette = np.stack([g[f"fit/palette/{c}"][:] for c in "rgb"], axis=1)
    labels = g["quantize/labels"]
    for i, name in enumerate(coll.paths):
        if expected[name] is None:
            continue
        h, w = coll.shapes[i]
        off = int(coll.offsets[i])
        with Image.open(out / expected[name]) as im:
            got = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(got, palette[labels[off:off + h * w]].reshape(h, w, 3))


@given(st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b
                                                          and b"\0" not in b),
                min_size=1, max_size=3))
def test_stored_form_round_trips_any_name(parts):
    name = os.fsdecode(b"/".join(parts))
    stored = stored_name(name)
    stored.encode("utf-8")  # valid text: Zarr strings, JSON
    assert source_name(stored) == name
    output_name(stored).encode("utf-8")
    raw = b"/".join(parts)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    if "\\" not in text:  # valid names without a backslash are stored and exported unchanged
        assert stored == text
        assert output_name(stored) == text
