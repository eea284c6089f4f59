"""fit --quality MIN-MAX: the smallest K whose exact palette reaches MAX dB, exit 99 below MIN,
resumable; and the config key quantize.palette, which works as quantize --palette."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import streamq_cmd
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.colorspace import to_space
from streamq.errors import ConfigError
from streamq.metrics import psnr
from streamq.store.checkpoint import decode_state

QUALITY = ["--quality", "20-29.5", "--k-range", "2-32", "--n-init", "2", "--scheduler", "threads"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _brute_psnr(path, centers, palette):
    """PSNR over every stored pixel, each pixel on its nearest centre (numpy argmin over
    float64 squared distances in the fit's RGB space) shown as that centre's palette colour, as quantize
    does: a reference independent of the histogram."""
    coll = streamq.open_store(path)
    c = np.asarray(centers, np.float64)
    pal = np.asarray(palette, np.int64)
    sse, n = 0, 0
    for i in range(len(coll)):
        px = coll.read(i).reshape(-1, 3)
        d = ((to_space(px, "rgb").astype(np.float64)[:, None, :] - c[None]) ** 2).sum(2)
        sse += int(((px.astype(np.int64) - pal[d.argmin(1)]) ** 2).sum())
        n += px.size
    return psnr(sse / n)


@pytest.fixture(scope="module")
def searched(faces_store, tmp_path_factory):
    """The target 20-29.5 dB in K = 2..32 searched on a copy of the faces store, from keys of
    a --config file; the command's JSON output."""
    root = tmp_path_factory.mktemp("quality")
    path = _copy(faces_store, root / "faces.zarr")
    (root / "q.yaml").write_text("fit:\n  quality: [20, 29.5]\n  k_range: [2, 32]\n  n_init: 2\n")
    out = CliRunner().invoke(cli, ["fit", path, "--config", str(root / "q.yaml"), "--scheduler",
                                   "threads", "--json"])
    assert out.exit_code == 0, out.output
    return path, json.loads(out.output)


def test_chosen_k_is_the_smallest_that_reaches_max(searched, faces_store, tmp_path):
    path, res = searched
    k = res["k"]
    q = res["quality"]
    assert 2 < k <= 32
    assert q["k"] == k
    assert q["reached"]
    assert q["searched"] == [2, 32]
    assert res["algorithm"] == "lloyd"
    assert res["psnr"] >= 29.5
    assert _brute_psnr(path, res["centers"], res["palette"]) == pytest.approx(res["psnr"], abs=1e-9)
    assert len(q["tried"]) <= 7  # a binary search: about log2(31) + 1 fits, not 31
    # K - 1 fitted independently, by the plain exact fit with the same settings, misses MAX
    other = _copy(faces_store, tmp_path / "k-1.zarr")
    below = streamq.fit(other, colors=k - 1, algorithm="lloyd", n_init=2, scheduler="threads")
    assert _brute_psnr(other, below.centers, below.palette) < 29.5
    assert below.psnr < 29.5
    # ... and K fitted the same way is the search's palette
    same = streamq.fit(other, colors=k, algorithm="lloyd", n_init=2, scheduler="threads",
                       overwrite=True)
    np.testing.assert_array_equal(same.palette, np.asarray(res["palette"], np.uint8))
    # the stored fit says what was chosen: the rerun's summary, info and its JSON
    runner = CliRunner()
    again = runner.invoke(cli, ["fit", path, *QUALITY])
    assert again.exit_code == 0, again.output
    line = again.output.strip()
    assert line.startswith(f"already complete: K={k} (lloyd, rgb)")
    assert (f"quality 20-29.5 dB: K={k} is the smallest K in 2..32 reaching 29.5 dB "
            f"(K={k - 1}: {below.psnr:.2f} dB)") in line
    info = json.loads(runner.invoke(cli, ["info", path, "--json"]).output)["fit"]
    assert info["k"] == k
    assert info["quality"]["k"] == k
    text = runner.invoke(cli, ["info", path]).output
    assert f"target       quality 20-29.5 dB: K={k} is the smallest" in text


def test_search_resumes_after_kill_with_the_same_k_and_palette(searched, faces_store, tmp_path,
                                                               caplog):
    from helpers import run_until

    path = _copy(faces_store, tmp_path / "faces.zarr")

    def tried():
        try:
            text = str(zarr.open_array(f"{path}/fit/checkpoint", mode="r")[0])
        except (FileNotFoundError, KeyError, ValueError):
            return []
        return [r["k"] for r in decode_state(text)["tried"]] if text else []

    status = run_until(streamq_cmd("fit", path, *QUALITY), lambda: len(tried()) >= 2)
    assert status is None, "the search ended before the kill"
    before = tried()
    assert 2 <= len(before) < len(searched[1]["quality"]["tried"])
    with caplog.at_level("INFO", logger="streamq.fit.quality"):
        res = streamq.fit(path, quality=(20, 29.5), k_range=(2, 32), n_init=2,
                          scheduler="threads")
    assert res.k == searched[1]["k"]
    np.testing.assert_array_equal(res.palette, np.asarray(searched[1]["palette"], np.uint8))
    assert res.quality["tried"] == searched[1]["quality"]["tried"]
    recorded = [r.getMessage() for r in caplog.records if "(recorded)" in r.getMessage()]
    assert [int(m.split("K=")[1].split(":")[0]) for m in recorded] == before  # not refitted


def test_below_min_exits_99_with_one_line(faces_store, tmp_path):
    path = _copy(faces_store, tmp_path / "faces.zarr")
    runner = CliRunner()
    args = ["fit", path, "--quality", "45-50", "--k-range", "2-8", "--n-init", "2",
            "--scheduler", "threads"]
    for _ in range(2):  # the rerun fails again, from the recorded K
        out = runner.invoke(cli, args)
        assert out.exit_code == 99
        lines = out.output.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"error: {path}: quality 45-50 dB not reached: K=8, the "
                                   "largest K searched (2..8), gives PSNR ")
        assert lines[0].endswith("dB, below MIN 45 dB; widen key 'fit.k_range' (--k-range) or "
                                 "lower MIN")
    assert "palette      none: " in runner.invoke(cli, ["info", path]).output
    # MIN reached but not MAX: the largest K, as pngquant does
    out = runner.invoke(cli, [*args[:2], "--quality", "20-50", *args[4:], "--overwrite", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert res["k"] == 8
    assert not res["quality"]["reached"]
    assert 20 <= res["psnr"] < 50


def test_range_capped_at_the_distinct_colours(tmp_path):
    (tmp_path / "flat" / "Solid").mkdir(parents=True)
    for i, colour in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        Image.new("RGB", (20, 20), colour).save(tmp_path / "flat" / "Solid" / f"Solid_{i:04d}.png")
    store = str(tmp_path / "flat.zarr")
    streamq.ingest(tmp_path / "flat", store, scheduler="sync", progress=False)
    res = streamq.fit(store, quality=(30, 40), k_range=(2, 8), scheduler="sync")
    assert res.k == 3
    assert res.mse == 0
    assert res.quality["searched"] == [2, 3]
    with pytest.raises(ConfigError, match=r"only 3 distinct colours, fewer than the smallest K "
                                          r"of key 'fit.k_range' \[4, 8\]") as e:
        streamq.fit(store, quality=(30, 40), k_range=(4, 8), scheduler="sync", overwrite=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("flags", "message"), [
    (["--quality", "40-30"], "key 'fit.quality' has value [40.0, 30.0], expected [MIN, MAX]: "
                             "PSNR targets in dB with 0 <= MIN <= MAX <= 100"),
    (["--quality", "30-140"], "key 'fit.quality' has value [30.0, 140.0], expected [MIN, MAX]"),
    (["--quality", "high"], "--quality 'high' is not MIN-MAX in dB such as 30-40"),
    (["--quality", "30-40", "--k-range", "64-8"],
     "key 'fit.k_range' has value [64, 8], expected [LO, HI]: the K searched, integers with "
     "2 <= LO <= HI <= 65536"),
    (["--quality", "30-40", "--k-range", "1-8"], "key 'fit.k_range' has value [1, 8], expected"),
    (["--quality", "30-40", "--k-range", "8"], "--k-range '8' is not LO-HI"),
    (["--k-range", "2-8"], "--k-range goes with --quality MIN-MAX"),
    (["--quality", "30-40", "-k", "8"], "--colors and --quality exclude each other"),
    (["--quality", "30-40", "--per-image", "--k-range", "2-300"],
     "key 'per_image.k_range' has value [2, 300], expected [LO, HI]: the K searched, integers "
     "with 2 <= LO <= HI <= 256"),
    (["--quality", "30-40", "--per-image", "-k", "8"], "--colors and --quality exclude each other"),
    (["--quality", "30-40", "--algorithm", "minibatch"], "--quality fits each K by exact Lloyd"),
])
def test_bad_quality_arguments_are_one_line(tmp_path, flags, message):
    out = CliRunner().invoke(cli, ["fit", str(tmp_path / "none.zarr"), *flags])
    assert out.exit_code == 1
    assert out.output.startswith(f"error: {message}")
    assert len(out.output.strip().splitlines()) == 1


def test_run_refuses_quality_with_per_image_or_a_given_palette(tmp_path):
    base = {"store": str(tmp_path / "s.zarr"), "ingest": {"source": str(tmp_path)}}
    with pytest.raises(ConfigError, match="key 'fit.quality' chooses the K of the shared palette"):
        streamq.run({**base, "fit": {"quality": [30, 40]}, "per_image": {"enabled": True}})
    with pytest.raises(ConfigError, match="keys 'quantize.palette' and 'fit.quality' exclude"):
        streamq.run({**base, "fit": {"quality": [30, 40]}, "quantize": {"palette": "p.gpl"}})
    assert not (tmp_path / "s.zarr").exists()


# -- quantize.palette ----------------------------------------------------------------------------

def test_config_key_quantize_palette_works_as_the_flag(photo_store, photo_dir, tmp_path):
    from streamq.palettes import write_palette

    (tmp_path / "cfg").mkdir()
    colours = np.array([[20, 20, 20], [230, 230, 230], [200, 60, 40], [40, 90, 160],
                        [120, 160, 70], [250, 210, 80]], np.uint8)
    write_palette(tmp_path / "cfg" / "brand.gpl", colours, name="brand")
    (tmp_path / "cfg" / "q.yaml").write_text("quantize:\n  palette: brand.gpl\n")  # relative
    by_flag = _copy(photo_store, tmp_path / "flag.zarr")
    by_key = _copy(photo_store, tmp_path / "key.zarr")
    runner = CliRunner()
    common = ["--scheduler", "threads", "--overwrite", "--no-progress"]
    a = runner.invoke(cli, ["quantize", by_flag, "--palette", str(tmp_path / "cfg" / "brand.gpl"),
                            *common])
    b = runner.invoke(cli, ["quantize", by_key, "--config", str(tmp_path / "cfg" / "q.yaml"),
                            *common])
    assert a.exit_code == 0, a.output
    assert b.exit_code == 0, b.output
    assert b.output.splitlines()[0] == a.output.splitlines()[0]  # "palette: GIMP palette ..."
    assert "brand.gpl" in b.output.splitlines()[0]
    labels = {p: zarr.open_array(f"{p}/quantize/labels", mode="r")[:] for p in (by_flag, by_key)}
    np.testing.assert_array_equal(labels[by_flag], labels[by_key])
    fits = [streamq.load_fit(p) for p in (by_flag, by_key)]
    np.testing.assert_array_equal(fits[1].palette, colours)
    assert fits[0].palette_source == fits[1].palette_source
    assert fits[1].status == "given"
    # streamq run: the given palette takes the fit's place
    cfg = {"store": str(tmp_path / "run.zarr"), "dask": {"scheduler": "threads"},
           "ingest": {"source": str(photo_dir), "chunk_pixels": 20_000},
           "quantize": {"palette": str(tmp_path / "cfg" / "brand.gpl")}}
    report = streamq.run(cfg, progress=False)
    assert list(report.stages) == ["ingest", "palette", "quantize"]
    assert report.stages["palette"].palette_source == fits[0].palette_source
    np.testing.assert_array_equal(zarr.open_array(f"{cfg['store']}/quantize/labels", mode="r")[:],
                                  labels[by_flag])
