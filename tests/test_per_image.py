"""Per-image palettes (the tutorial at scale) against a plain in-memory scikit-learn loop."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import zarr
from conftest import pillow_rgb
from PIL import Image
from sklearn.cluster import KMeans

import streamq
from streamq.colorspace import to_space
from streamq.config import parse_config
from streamq.errors import ConfigError, StoreMismatchError, StreamQError
from streamq.per_image import fit_image, fit_per_image, load_per_image, sample_index


@pytest.fixture(scope="module")
def few_faces(tmp_path_factory):
    """A third of the session's faces collection (same kind of crops): what is checked here
    is per image, and the per-image fits cost per image."""
    from streamq.examples import make_collection

    root = tmp_path_factory.mktemp("few_faces")
    make_collection(root, 16, seed=1, min_side=30, max_side=160)
    return root


@pytest.fixture(scope="module")
def ingested(few_faces, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pi_src") / "faces.zarr")
    streamq.ingest(few_faces, path, chunk_pixels=30_000, scheduler="threads", progress=False)
    return path


@pytest.fixture(scope="module")
def fitted(ingested, tmp_path_factory, cluster_address):
    path = str(tmp_path_factory.mktemp("pi") / "pi.zarr")
    shutil.copytree(ingested, path)
    fit_per_image(path, colors=[2, 6, 30], sample=0.7, seed=4, pixels_per_task=100_000,
                  scheduler=cluster_address)
    streamq.quantize(path, scheduler=cluster_address)
    return path


def _reference(path_on_disk, image_id, k, seed=4, sample=0.7):
    """The tutorial, in memory: decode, scale to [0, 1], 70% sample, KMeans, predict."""
    rgb = pillow_rgb(path_on_disk).reshape(-1, 3)
    x = (rgb.astype(np.float32) * np.float32(1 / 255))
    n = len(x)
    m = int(round(sample * n))
    idx = np.sort(np.random.default_rng([seed, image_id]).choice(n, size=m, replace=False))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # as streamq does: one thread, one result
        km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(x[idx])
    return km, rgb, x


@pytest.mark.parametrize("k", [2, 6, 30])
def test_same_result_as_a_plain_sklearn_loop(fitted, few_faces, k):
    coll = streamq.open_store(fitted)
    centers, palettes = load_per_image(fitted, k)
    labels = zarr.open_array(f"{fitted}/per_image/k{k}/labels", mode="r")
    psnr = zarr.open_group(fitted, mode="r")[f"per_image/k{k}/images/psnr"][:]
    for i in (0, 11, len(coll) - 1):
        km, rgb, x = _reference(few_faces / coll.paths[i], i, k)
        np.testing.assert_array_equal(centers[i], km.cluster_centers_.astype(np.float64))
        a, n = int(coll.offsets[i]), len(rgb)
        ours = np.asarray(labels[a:a + n]).astype(np.int64)
        ref = km.predict(x)
        assert (ours != ref).mean() < 1e-3  # ties and float32 rounding aside
        rebuilt = palettes[i][ours].astype(float)
        mse = ((rgb - rebuilt) ** 2).mean()
        assert psnr[i] == pytest.approx(10 * np.log10(255 ** 2 / mse), rel=1e-9)


def test_export_and_info_per_image(fitted, tmp_path):
    from click.testing import CliRunner

    from streamq.cli.main import cli

    coll = streamq.open_store(fitted)
    s = streamq.export(fitted, tmp_path / "k6", per_image=6, ids=[0, 1], scheduler="threads")
    assert s.n_written == 2
    _, palettes = load_per_image(fitted, 6)
    labels = zarr.open_array(f"{fitted}/per_image/k6/labels", mode="r")
    with Image.open(tmp_path / "k6" / (os.path.splitext(coll.paths[1])[0] + ".png")) as im:
        assert im.mode == "P"
        a, (h, w) = int(coll.offsets[1]), coll.shapes[1]
        expected = palettes[1][np.asarray(labels[a:a + h * w])].reshape(h, w, 3)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), expected)
    info = CliRunner().invoke(cli, ["info", fitted]).output
    assert "per-image    K=2,6,30 on 0.7" in info
    assert "K=30   labels complete" in info
    with pytest.raises(StreamQError, match="no per-image palettes for K=5"):
        streamq.export(fitted, tmp_path / "k5", per_image=5)


def test_psnr_grows_with_k(fitted):
    g = zarr.open_group(fitted, mode="r")
    p2, p6, p30 = (g[f"per_image/k{k}/images/psnr"][:] for k in (2, 6, 30))
    assert (p6 >= p2 - 1e-9).mean() > 0.95
    assert (p30 >= p6 - 1e-9).mean() > 0.95


def test_rerun_noop_other_params_refused(fitted, tmp_path):
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(fitted, copy)
    assert fit_per_image(copy, colors=[2, 6, 30], sample=0.7, seed=4, scheduler="sync").status \
        == "already complete"
    with pytest.raises(StoreMismatchError, match="other parameters"):
        fit_per_image(copy, colors=[3], scheduler="sync")


def test_cli_per_image_and_list_needs_flag(fitted, tmp_path):
    from click.testing import CliRunner

    from streamq.cli.main import cli

    copy = str(tmp_path / "c.zarr")
    shutil.copytree(fitted, copy)
    r = CliRunner().invoke(cli, ["fit", copy, "-k", "2,6", "--scheduler", "threads"])
    assert r.exit_code == 2
    assert "lists need --per-image" in r.output
    r = CliRunner().invoke(cli, ["fit", copy, "-k", "4", "--method", "histogram", "--scheduler", "threads"])
    assert r.exit_code == 2
    assert "--method applies to per-image palettes: add --per-image" in r.output
    r = CliRunner().invoke(cli, ["fit", copy, "--per-image", "-k", "3,4", "--sample", "0.5",
                                 "--method", "histogram", "--scheduler", "threads", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("fitted: per-image palettes K=3,4 for 16 images")
    assert "method histogram" in CliRunner().invoke(cli, ["info", copy]).output


# --- the histogram method -------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted_hist(ingested, tmp_path_factory, cluster_address):
    path = str(tmp_path_factory.mktemp("pih") / "pih.zarr")
    shutil.copytree(ingested, path)
    fit_per_image(path, colors=[2, 6, 30], sample=0.7, seed=4, method="histogram",
                  pixels_per_task=100_000, scheduler=cluster_address)
    streamq.quantize(path, scheduler=cluster_address)
    return path


@pytest.mark.parametrize("k", [2, 6, 30])
def test_histogram_method_same_as_in_memory_and_exact_labels(fitted_hist, few_faces, k):
    coll = streamq.open_store(fitted_hist)
    centers, palettes = load_per_image(fitted_hist, k)
    labels = zarr.open_array(f"{fitted_hist}/per_image/k{k}/labels", mode="r")
    psnr = zarr.open_group(fitted_hist, mode="r")[f"per_image/k{k}/images/psnr"][:]
    for i in (0, 11, len(coll) - 1):
        rgb = pillow_rgb(few_faces / coll.paths[i]).reshape(-1, 3)  # decoded again, in memory
        ref = fit_image(rgb, k, 0.7, 4, i, method="histogram")
        np.testing.assert_array_equal(centers[i], ref)  # bit for bit, whatever ran it
        x = to_space(rgb, "rgb").astype(np.float64)
        nearest = ((x[:, None, :] - centers[i][None]) ** 2).sum(2).argmin(1)
        a = int(coll.offsets[i])
        np.testing.assert_array_equal(np.asarray(labels[a:a + len(rgb)]), nearest)
        mse = ((rgb - palettes[i][nearest].astype(float)) ** 2).mean()
        assert psnr[i] == pytest.approx(10 * np.log10(255 ** 2 / mse), rel=1e-9)


def test_histogram_method_as_good_as_kmeans(fitted, fitted_hist):
    g, h = zarr.open_group(fitted, mode="r"), zarr.open_group(fitted_hist, mode="r")
    for k in (2, 6, 30):
        ours = h[f"per_image/k{k}/images/psnr"][:]
        ref = g[f"per_image/k{k}/images/psnr"][:]
        finite = np.isfinite(ours) & np.isfinite(ref)
        assert ours[finite].mean() > ref[finite].mean() - 0.1  # the same k-means, other starts


def test_histogram_method_deterministic_across_runners_and_resume(fitted_hist, tmp_path):
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(fitted_hist, copy)
    want = {k: load_per_image(fitted_hist, k)[0] for k in (2, 6, 30)}
    # other tasks (many small ones), other runner: the same palettes
    fit_per_image(copy, colors=[2, 6, 30], sample=0.7, seed=4, method="histogram",
                  pixels_per_task=7_000, scheduler="threads", overwrite=True)
    for k in (2, 6, 30):
        np.testing.assert_array_equal(load_per_image(copy, k)[0], want[k])
    # an interrupted run: half the task records missing, the section still running
    st = zarr.open_group(copy, mode="r+")
    records = zarr.open_array(f"{copy}/per_image/records", mode="r+")
    n = records.shape[0]
    for i in range(0, n, 2):
        records[i] = ""
    st.attrs["per_image"] = {**st.attrs["per_image"], "state": "running"}
    assert fit_per_image(copy, colors=[2, 6, 30], sample=0.7, seed=4, method="histogram",
                         scheduler="sync").status == "fitted"
    for k in (2, 6, 30):
        np.testing.assert_array_equal(load_per_image(copy, k)[0], want[k])
    # and the kmeans palettes of the same store are other parameters
    with pytest.raises(StoreMismatchError, match="method=histogram"):
        fit_per_image(copy, colors=[2, 6, 30], sample=0.7, seed=4, scheduler="sync")


def test_method_key_validated():
    with pytest.raises(ConfigError) as err:
        parse_config({"per_image": {"method": "fast"}})
    assert "key 'per_image.method' has value 'fast', expected one of 'kmeans', 'histogram'" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown per-image method 'fast'"):
        fit_image(np.zeros((50, 3), np.uint8), 2, 0.7, 0, 0, method="fast")


def test_sample_index_is_seeded_per_image():
    a = sample_index(1000, 2, 0.7, 3, 5)
    assert len(a) == 700
    assert np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, sample_index(1000, 30, 0.7, 3, 5))
    assert not np.array_equal(a, sample_index(1000, 2, 0.7, 3, 6))
    np.testing.assert_array_equal(sample_index(10, 30, 0.7, 3, 5), np.arange(10))


@pytest.mark.parametrize("n", [1, 3, 100, 9_999, 10_000, 10_001, 12_345, 200_000])
@pytest.mark.parametrize("sample", [0.015, 0.03, 0.049, 0.3, 0.7, 0.99])
def test_sample_index_is_the_sorted_seeded_choice(n, sample):
    # the fast path (no final shuffle, a mask instead of a sort) draws the same set
    for k in (2, 256):
        m = min(n, max(k, int(round(sample * n))))
        got = sample_index(n, k, sample, 3, 5)
        want = (np.sort(np.random.default_rng([3, 5]).choice(n, size=m, replace=False)) if m < n
                else np.arange(n))
        np.testing.assert_array_equal(got, want)


def test_quantize_rerun_needs_no_cluster(fitted):
    # Every per-image K is labelled: a rerun is a no-op that does not even reach for a
    # scheduler (this address has nobody listening).
    summary = streamq.quantize(fitted, scheduler="tcp://127.0.0.1:9")
    assert summary.status == "already complete"
    assert set(summary.mean_psnr) == {2, 6, 30}


_CHINA = """
import numpy as np
from sklearn.datasets import load_sample_image  # decoded by Pillow
from streamq.kmeans import label_pixels
from streamq.kmeans.precompile import per_image_kernels, precompile
from streamq.per_image import fit_image

rgb = np.ascontiguousarray(load_sample_image("china.jpg").reshape(-1, 3))
"""

_COLD_SCRIPT = _CHINA + """
from click.testing import CliRunner
from streamq.cli.main import cli

warm = CliRunner().invoke(cli, ["warmup", "per-image"])  # the command, in this process
assert warm.exit_code == 0, warm.output
assert precompile() == 0  # all done by the command
for k, px in ((2, rgb), (30, rgb.copy())):  # pixels read-only (as Pillow gives them) and not
    assert px.flags.writeable == (k == 30)
    label_pixels(px, fit_image(px, k, 0.7, 0, 0, method="histogram"))
print(warm.output.strip())
print([len(d.signatures) for d, _ in per_image_kernels()])
"""

_AFTER_WARMUP_SCRIPT = _CHINA + """
for k in (2, 30):
    label_pixels(rgb, fit_image(rgb, k, 0.7, 0, 0, method="histogram"))
stats = [d.stats for d, _ in per_image_kernels()]
print(sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats))
"""


def _python(script: str, env: dict[str, str], *args: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, *(("-c", script) if script else ()), *args], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _output(proc) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out.strip()


def test_warmup_compiles_the_signatures_the_path_calls_and_leaves_nothing_to_compile(tmp_path):
    # On an empty numba cache, two processes at once (as a cluster's workers start) each run
    # `streamq warmup per-image`: the kernels are compiled for the declared types (the command
    # reports the 8 kernels), and a fit and labelling after it add no other signatures, whether the
    # pixels are writable (read from the store) or not (decoded by Pillow). So the cache holds
    # what the warmup compiled and nothing else: a later process fits and labels a real photo
    # loading every kernel from that cache, compiling none.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    for p in [_python(_COLD_SCRIPT, env) for _ in range(2)]:
        warm, signatures = _output(p).splitlines()
        assert warm.startswith("8 per-image kernels compiled or loaded in"), warm
        assert signatures == "[1, 1, 1, 1, 1, 1, 1, 1]"
    assert len(list((tmp_path / "numba").rglob("*.nbi"))) >= 8
    assert _output(_python(_AFTER_WARMUP_SCRIPT, env)) == "8 0"
