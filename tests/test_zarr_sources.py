"""Zarr and OME-Zarr images as ingest inputs (streamq.ingest.zarr_images, read in bands by
streamq.ingest.bands): built from a real photo with zarr-python, they store exactly the source
samples (16-bit scaled), the same pixels as the same photo ingested from PNG files (Pillow,
pypng: an independent path), are read a band of rows at a time, resume like files, and a
Zarr image that cannot be one image is skipped with its reason."""

from __future__ import annotations

import numpy as np
import png
import pytest
import zarr
from PIL import Image

import streamq
from streamq.errors import StoreMismatchError
from streamq.ingest import bands
from streamq.ingest.local import list_sources, source_fingerprint

H, W = 150, 210  # the crop: 31,500 px, several chunks of pixels per image
SETTINGS = dict(chunk_pixels=8192, block_pixels=4096)
OME04 = "0.4"


def _photo() -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return np.ascontiguousarray(load_sample_image("china.jpg")[120:120 + H, 200:200 + W])


def _scale16(v: np.ndarray) -> np.ndarray:
    """The documented 16-bit rule, written out here: round(v * 255 / 65535)."""
    return np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _axes(names: str) -> list[dict[str, str]]:
    kinds = {"t": "time", "c": "channel"}
    return [{"name": n, "type": kinds.get(n, "space")} for n in names]


def _ome(path, data: np.ndarray, axes: str, version: str = OME04, chunks=None) -> None:
    """An OME-Zarr image of ``data`` (axes as named) with a half-size second level, NGFF 0.4
    (Zarr format 2) or 0.5 (format 3)."""
    fmt = 2 if version == OME04 else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    ms = [{"version": version, "axes": _axes(axes), "datasets": [
        {"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0 if a in "tcz" else 2.0 ** i for a in axes]}]}
        for i in range(2)]}]
    if fmt == 2:
        g.attrs["multiscales"] = ms
    else:
        g.attrs["ome"] = {"version": version, "multiscales": ms}
    g.create_array("0", data=data, chunks=chunks or tuple(min(s, 40) for s in data.shape))
    y, x = axes.index("y"), axes.index("x")
    half = data[tuple(slice(None, None, 2) if i in (y, x) else slice(None)
                      for i in range(data.ndim))]
    g.create_array("1", data=np.ascontiguousarray(half))


def _plain(path, data: np.ndarray, fmt: int, chunks) -> None:
    zarr.create_array(str(path), data=data, chunks=chunks, zarr_format=fmt)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A folder of Zarr images of one photo and its PNG twins, plus bad OME-Zarr images;
    ``{name: expected stored RGB}`` and the RGBA source."""
    root = tmp_path_factory.mktemp("zarrsrc")
    photo = _photo()
    rng = np.random.default_rng(4)
    noise = rng.integers(-300, 300, photo.shape)  # low bits a truncation would lose
    deep = (photo.astype(np.int64) * 257 + noise).clip(0, 65535).astype(np.uint16)
    grey16 = deep[..., 1].copy()
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    alpha[:20] = 255
    rgba = np.dstack([photo, alpha])

    _plain(root / "plain.zarr", photo, 3, (48, 64, 3))  # chunks across the rows of bands
    _plain(root / "deep16.zarr", deep, 2, (50, 100, 3))
    _plain(root / "grey16.zarr", grey16, 3, (64, 64))
    _ome(root / "cyx.ome.zarr", np.moveaxis(photo, 2, 0).copy(), "cyx")
    _ome(root / "tczyx.ome.zarr", np.moveaxis(photo, 2, 0)[None, :, None].copy(), "tczyx",
         version="0.5")
    _ome(root / "rgba.ome.zarr", rgba, "yxc", version="0.5")
    # the same pixels as PNG files, decoded by Pillow and pypng
    (root / "png").mkdir()
    Image.fromarray(photo).save(root / "png" / "photo.png")
    png.from_array(deep.reshape(H, W * 3), mode="RGB;16").save(str(root / "png" / "deep16.png"))
    png.from_array(grey16, mode="L;16").save(str(root / "png" / "grey16.png"))
    Image.fromarray(rgba).save(root / "png" / "rgba.png")
    # Zarr images that are not one 2-D image of 8 or 16 bits
    (root / "bad").mkdir()
    two_t = np.stack([np.moveaxis(photo, 2, 0)] * 2)[:, :, None]
    _ome(root / "bad" / "two_t.ome.zarr", two_t, "tczyx")
    _ome(root / "bad" / "float.ome.zarr", np.moveaxis(photo, 2, 0) / 255.0, "cyx",
         version="0.5")
    _ome(root / "bad" / "five_c.ome.zarr", np.concatenate([np.moveaxis(photo, 2, 0)] * 2)[:5],
         "cyx")
    zarr.open_group(str(root / "bad" / "group.zarr"), mode="w").create_array(
        "a", data=photo)
    want = {"plain.zarr": photo, "cyx.ome.zarr": photo, "tczyx.ome.zarr": photo,
            "deep16.zarr": _scale16(deep), "grey16.zarr": np.repeat(
                _scale16(grey16)[..., None], 3, axis=2), "rgba.ome.zarr": None}
    return root, want, rgba


BAD = {"bad/two_t.ome.zarr": "OME-Zarr image with 2 timepoints: expected one",
       "bad/float.ome.zarr": "OME-Zarr image with samples of float64: expected uint8 or uint16",
       "bad/five_c.ome.zarr": "OME-Zarr image with 5 channels: expected 1 (grey), 3 (RGB) or "
                              "4 (RGBA)",
       "bad/group.zarr": "a Zarr group without OME-Zarr 'multiscales' metadata: expected an "
                         "image array or an OME-Zarr image"}


@pytest.fixture(scope="module")
def ingested(sources, tmp_path_factory, cluster_address):
    root, _, _ = sources
    path = str(tmp_path_factory.mktemp("zs") / "s.zarr")
    summary = streamq.ingest(root, path, scheduler=cluster_address, progress=False, **SETTINGS)
    return path, summary


def _image(store: str, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    coll = streamq.open_store(store)
    i = list(coll.paths).index(name)
    off, (h, w) = int(coll.offsets[i]), coll.shapes[i]
    group = zarr.open_group(store, mode="r")
    rgb = np.asarray(group["pixels"][off:off + h * w]).reshape(h, w, 3)
    alpha = (np.asarray(group["alpha"][off:off + h * w]).reshape(h, w) if "alpha" in group
             else None)
    return rgb, alpha


def test_zarr_images_store_their_samples_and_what_png_twins_store(sources, ingested):
    root, want, rgba = sources
    store, summary = ingested
    coll = streamq.open_store(store)
    assert {s.path: s.reason for s in coll.skipped} == BAD
    assert sorted(coll.paths) == sorted([*want, "png/photo.png", "png/deep16.png",
                                         "png/grey16.png", "png/rgba.png"])
    modes = dict(zip(coll.paths, zarr.open_group(store, mode="r")["images/mode"][:],
                     strict=True))
    assert [modes[n] for n in ("deep16.zarr", "grey16.zarr", "rgba.ome.zarr", "cyx.ome.zarr")
            ] == ["RGB;16", "I;16", "RGBA", "RGB"]
    for name, expected in want.items():
        assert coll.shapes[list(coll.paths).index(name)] == (H, W)
        rgb, _ = _image(store, name)
        if expected is not None:
            np.testing.assert_array_equal(rgb, expected, err_msg=name)
    twins = {"plain.zarr": "png/photo.png", "cyx.ome.zarr": "png/photo.png",
             "tczyx.ome.zarr": "png/photo.png", "deep16.zarr": "png/deep16.png",
             "grey16.zarr": "png/grey16.png", "rgba.ome.zarr": "png/rgba.png"}
    for name, twin in twins.items():
        got, got_alpha = _image(store, name)
        ref, ref_alpha = _image(store, twin)
        np.testing.assert_array_equal(got, ref, err_msg=f"{name} vs {twin}")
        if name == "rgba.ome.zarr":  # alpha kept, colours premultiplied, as for the PNG
            np.testing.assert_array_equal(got_alpha, rgba[..., 3])
            np.testing.assert_array_equal(got_alpha, ref_alpha)
            premult = (rgba[..., :3].astype(np.uint32) * rgba[..., 3:].astype(np.uint32)
                       + 127) // 255
            np.testing.assert_array_equal(got, premult.astype(np.uint8))
    flags = dict(zip(coll.paths, zarr.open_group(store, mode="r")["images/has_alpha"][:],
                     strict=True))
    assert [bool(flags[n]) for n in ("rgba.ome.zarr", "png/rgba.png", "plain.zarr")
            ] == [True, True, False]


def test_read_in_bands_of_at_most_band_pixels(sources, ingested, tmp_path, monkeypatch):
    """With bands of 1,500 pixels (7 rows of 210), every read of a Zarr image holds at most
    one band, the reads cover every row, and the store is the one of 4 Mpx bands."""
    root, want, _ = sources
    monkeypatch.setattr(bands, "BAND_PIXELS", 1500)
    reads: dict[str, list[tuple[int, int]]] = {}
    real = bands.zarr_rows

    def counting(path, options=None):
        rows = real(path, options)
        seen = reads.setdefault(path.rsplit("/", 1)[-1], [])

        def read(top, bottom):
            seen.append((top, bottom))
            return rows.read(top, bottom)

        return bands.Rows(rows.width, rows.block, read)

    monkeypatch.setattr(bands, "zarr_rows", counting)
    path = str(tmp_path / "small_bands.zarr")
    streamq.ingest(root, path, scheduler="threads", progress=False, **SETTINGS)
    assert set(reads) == set(want)
    for name, seen in reads.items():
        assert max(b - t for t, b in seen) * W <= 1500, name
        covered = np.zeros(H, int)
        for t, b in seen:
            covered[t:b] += 1
        # every row read; a row twice only where two write tasks share the image's rows
        assert covered.min() >= 1, name
        assert covered.sum() < H + 2 * len(seen), name
    big = zarr.open_group(ingested[0], mode="r")["pixels"]
    small = zarr.open_group(path, mode="r")["pixels"]
    np.testing.assert_array_equal(np.asarray(small[:]), np.asarray(big[:]))


def test_band_reads_align_to_chunk_rows(sources):
    """A band that holds whole chunks is a whole number of chunk rows on their grid."""
    root, want, _ = sources
    rows = bands.zarr_rows(str(root / "plain.zarr"))
    assert rows.block == 48
    got = list(bands.read_rows(rows, 10, H, False, (255, 255, 255), band_pixels=100 * W))
    assert [t for t, _, _ in got] == [10, 96]  # 96: two chunks of 48 rows per band
    np.testing.assert_array_equal(np.concatenate([rgb for _, rgb, _ in got]),
                                  want["plain.zarr"][10:])


def test_listing_fingerprint_and_rerun(sources, tmp_path):
    """A Zarr image is one input of a folder, a list file or on its own; the fingerprint
    changes when a chunk is rewritten, and a rerun on the same files resumes."""
    root, want, _ = sources
    _, rel, _ = list_sources(root)
    assert "cyx.ome.zarr" in rel
    assert not any(r.startswith("cyx.ome.zarr/") for r in rel)
    (tmp_path / "list.txt").write_text(f"{root / 'cyx.ome.zarr'}\n{root / 'png/photo.png'}\n")
    one, rel1, _ = list_sources(root / "plain.zarr")
    assert (one, rel1) == (str(root), ["plain.zarr"])

    copy = tmp_path / "img.ome.zarr"
    _ome(copy, np.moveaxis(want["cyx.ome.zarr"], 2, 0).copy(), "cyx")
    fp = source_fingerprint(str(tmp_path), ["img.ome.zarr"])
    assert source_fingerprint(str(tmp_path), ["img.ome.zarr"]) == fp
    store = str(tmp_path / "s.zarr")
    listed = streamq.ingest(tmp_path / "list.txt", store, scheduler="threads", progress=False)
    assert (listed.n_images, listed.n_skipped) == (2, 0)
    np.testing.assert_array_equal(*[_image(store, n)[0] for n in ("cyx.ome.zarr",
                                                                  "png/photo.png")])
    store2 = str(tmp_path / "s2.zarr")
    first = streamq.ingest(copy, store2, scheduler="threads", progress=False)
    assert first.n_images == 1
    again = streamq.ingest(copy, store2, scheduler="threads", progress=False)
    assert again.status == "already complete"
    zarr.open_array(str(copy / "0"), mode="r+")[0, 0, 0] = 7  # one chunk rewritten
    assert source_fingerprint(str(tmp_path), ["img.ome.zarr"]) != fp
    with pytest.raises(StoreMismatchError, match="other inputs"):
        streamq.ingest(copy, store2, scheduler="threads", progress=False)


def test_ome_zarr_in_a_bucket(sources, ingested, s3, tmp_path):
    """Zarr images under an S3 prefix are listed as one input each and read by the workers
    from the bucket: the same pixels as from the disk."""
    import s3fs

    root, _, _ = sources
    fs = s3fs.S3FileSystem(**{k: v for k, v in s3.items() if k != "endpoint_url"},
                           endpoint_url=s3["endpoint_url"])
    from helpers import BUCKET

    for name in ("cyx.ome.zarr", "plain.zarr"):
        fs.put(str(root / name), f"{BUCKET}/zarrsrc/{name}", recursive=True)
    fs.put(str(root / "bad" / "two_t.ome.zarr"), f"{BUCKET}/zarrsrc/bad/two_t.ome.zarr",
           recursive=True)
    store = str(tmp_path / "bucket.zarr")
    summary = streamq.ingest(f"s3://{BUCKET}/zarrsrc/", store, scheduler="threads",
                             progress=False, storage_options=s3, **SETTINGS)
    coll = streamq.open_store(store)
    assert list(coll.paths) == ["cyx.ome.zarr", "plain.zarr"]
    assert {s.path: s.reason for s in coll.skipped} == {
        "bad/two_t.ome.zarr": BAD["bad/two_t.ome.zarr"]}
    for name in coll.paths:
        np.testing.assert_array_equal(_image(store, name)[0], _image(ingested[0], name)[0])
    again = streamq.ingest(f"s3://{BUCKET}/zarrsrc/", store, scheduler="threads",
                           progress=False, storage_options=s3, **SETTINGS)
    assert summary.n_images == 2
    assert again.status == "already complete"
