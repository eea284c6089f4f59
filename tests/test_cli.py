"""The command line: help, version, errors as one line, info output, strict mode."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from streamq import __version__
from streamq.cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_commands_in_pipeline_order(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    order = [result.output.index(f"  {c} ") for c in ("example", "ingest", "info")]
    assert order == sorted(order)
    for cmd in ("example", "ingest", "info"):
        sub = runner.invoke(cli, [cmd, "--help"])
        assert sub.exit_code == 0
        assert "Usage:" in sub.output


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_info_text_json_and_grid(runner, faces_store, tmp_path):
    text = runner.invoke(cli, ["info", faces_store])
    assert text.exit_code == 0, text.output
    assert "images       48" in text.output
    assert "images per label:" in text.output
    grid = tmp_path / "grid.png"
    js = runner.invoke(cli, ["info", faces_store, "--json", "--grid", str(grid), "--top", "3"])
    info = json.loads(js.output)
    assert info["n_images"] == 48
    assert len(info["labels_top"]) == 3
    assert sum(x["count"] for x in info["labels_top"]) + info["labels_tail"]["n_images"] == 48
    assert info["raw_bytes"] == info["n_pixels"] * 3
    assert 0 < info["stored_bytes"]
    with Image.open(grid) as im:
        assert im.size[0] > 500
        assert im.size[1] > 200
    assert len(info["grid"]["ids"]) == 10


def test_errors_are_one_line(runner, tmp_path):
    result = runner.invoke(cli, ["info", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "does not exist" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  chunk_pixel: 5\n")
    result = runner.invoke(cli, ["ingest", "--config", str(bad), "x", "y"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: {bad}: unknown key 'ingest.chunk_pixel' (expected one of: "
                                      "background, block_pixels, chunk_pixels, codec, files_per_scan_task, level, "
                                      "max_pixels, source, strict)")


def test_strict_exit_code_and_summary(runner, odd_dir, tmp_path):
    store = tmp_path / "odd.zarr"
    result = runner.invoke(cli, ["ingest", str(odd_dir[0]), str(store), "--scheduler", "threads",
                                 "--strict", "--max-pixels", "50000"])
    assert result.exit_code == 3
    assert "6 skipped" in result.output
    assert "bad/empty.jpg (empty file (0 bytes))" in result.output
    again = runner.invoke(cli, ["ingest", str(odd_dir[0]), str(store), "--scheduler", "threads",
                                "--max-pixels", "50000"])
    assert again.exit_code == 0
    assert again.output.startswith("already complete")


def test_config_file_and_flag_override(runner, faces_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: out.zarr\ningest:\n  source: {faces_dir}\n  chunk_pixels: 50000\n"
                   "dask:\n  scheduler: sync\n")
    result = runner.invoke(cli, ["ingest", "--config", str(cfg), "--chunk-pixels", "40000", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["store"] == str(tmp_path / "out.zarr")  # relative to the file
    import zarr

    assert zarr.open_array(str(tmp_path / "out.zarr/pixels")).chunks == (40000, 3)


def test_example_command(runner, tmp_path):
    result = runner.invoke(cli, ["example", str(tmp_path / "ex"), "-n", "7", "--size", "64"])
    assert result.exit_code == 0
    files = sorted((tmp_path / "ex").rglob("*.jpg"))
    assert len(files) == 7
    for f in files:
        assert f.name.startswith(f.parent.name + "_")
        with Image.open(f) as im:
            assert im.size == (64, 64)
