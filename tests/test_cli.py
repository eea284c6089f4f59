"""The command line: help, version, errors as one line, info output, strict mode."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import console_state
from PIL import Image

from streamq import __version__
from streamq.cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


PIPELINE = ["example", "ingest", "info", "fit", "quantize", "cluster-images", "export", "report",
            "run", "unlock", "upgrade", "warmup"]


def test_help_lists_commands_in_pipeline_order(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    listing = result.output.split("Commands:\n", 1)[1].strip().splitlines()
    assert [line.split()[0] for line in listing] == PIPELINE  # every command, in this order
    for line in listing:  # each with a whole one-line description
        name, text = line.split(None, 1)
        assert text.endswith(".")
        assert "..." not in text
    for cmd in PIPELINE:
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
                                      "alpha, background, block_pixels, chunk_pixels, codec, files_per_scan_task, large, "
                                      "level, max_pixels, source, strict)")


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


def test_grid_titles_with_dollar_signs(runner, tmp_path):
    """Labels are folder names: '$' in them is text (matplotlib mathtext would fail on some)."""
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")
    labels = ["Price_$5", "a$b^c$_x", "bad$^$math", r"x$\frac$"]
    for n, label in enumerate(labels):
        (tmp_path / "src" / label).mkdir(parents=True)
        Image.fromarray(photo[50 * n: 50 * n + 40, :48]).save(tmp_path / "src" / label / "a.png")
    store = str(tmp_path / "s.zarr")
    assert runner.invoke(cli, ["ingest", str(tmp_path / "src"), store, "--scheduler", "threads"]).exit_code == 0
    grid = tmp_path / "new" / "grid.png"  # a new folder too
    result = runner.invoke(cli, ["info", store, "--grid", str(grid), "--grid-shape", "1x4"])
    assert result.exit_code == 0, result.output
    with Image.open(grid) as im:
        assert im.size == (880, 260)


def test_unexpected_errors_are_one_line_unless_vv(runner, faces_store, tmp_path):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(faces_store, store)
    for chunk in (store / "pixels" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"not a chunk")  # a damaged store
    result = runner.invoke(cli, ["info", str(store), "--grid", str(tmp_path / "g.png")])
    assert result.exit_code == 1
    assert result.output.startswith("error: unexpected ")
    assert result.output.rstrip().endswith("(a damaged store or a bug: rerun with -vv for the traceback)")
    assert result.output.strip().count("\n") == 0
    result = runner.invoke(cli, ["-vv", "info", str(store), "--grid", str(tmp_path / "g.png")])
    assert result.exit_code == 1
    assert result.exception is not None
    assert not isinstance(result.exception, SystemExit)  # the traceback, as asked


@pytest.mark.parametrize(("args", "message"), [
    (["report", "{missing}", "{tmp}/r.html"], "does not exist (expected a streamq store)"),
    (["report", "{faces}", "/proc/streamq-report.html"], "cannot write the report"),
    (["cluster-images", "{missing}"], "does not exist (expected a streamq store)"),
    (["cluster-images", "{faces}", "-g", "2"], "has no shared palette; run `streamq fit` and "
                                               "`streamq quantize` first"),
    (["export", "{photos}", "{tmp}/afile", "--scheduler", "threads"], "output folder {tmp}/afile is a file; choose a folder"),
    (["info", "{missing}"], "does not exist"),
])
def test_command_errors_are_one_line(runner, faces_store, photo_store, tmp_path, args, message):
    (tmp_path / "afile").write_text("x")
    fill = {"missing": str(tmp_path / "missing.zarr"), "tmp": str(tmp_path), "faces": faces_store,
            "photos": photo_store}
    result = runner.invoke(cli, [a.format(**fill) for a in args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ")
    assert message.format(**fill) in result.output
    assert result.output.strip().count("\n") == 0


@pytest.mark.parametrize(("args", "message"), [
    (["example", "{tmp}/ex", "--size", "0"], "Invalid value for '--size': 0 is not in the range x>=1"),
    (["example", "{tmp}/ex", "-n", "0"], "0 is not in the range x>=1"),
    (["info", "{faces}", "--top", "0"], "Invalid value for '--top'"),
])
def test_bad_flags_are_usage_errors(runner, faces_store, tmp_path, args, message):
    fill = {"tmp": str(tmp_path), "faces": faces_store}
    result = runner.invoke(cli, [a.format(**fill) for a in args])
    assert result.exit_code == 2
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_storage_option_flags():
    import click

    from streamq.cli.options import storage_overrides

    got = storage_overrides(["anon=true", "key=0123", "max_concurrency=4", "endpoint_url=http://h:9000",
                             "client_kwargs.region_name=eu-west-1", "secret=a=b"])
    assert got == {"storage_options.anon": True, "storage_options.key": "0123",
                   "storage_options.max_concurrency": 4,
                   "storage_options.endpoint_url": "http://h:9000",
                   "storage_options.client_kwargs.region_name": "eu-west-1",
                   "storage_options.secret": "a=b"}
    with pytest.raises(click.BadParameter, match="a value without '='") as err:
        storage_overrides(["novalue"])
    assert "novalue" not in str(err.value)  # it may be a credential given without its KEY=
    for bad, key in (("=x", "''"), ("a..b=1", "'a..b'")):
        with pytest.raises(click.BadParameter, match=f"KEY {key} is empty or has an empty part"):
            storage_overrides([bad])


# Every option whose help shows a default, with the config key it overrides (the list format).
HELP_DEFAULTS = {
    ("ingest", "--chunk-pixels"): ("ingest.chunk_pixels", ","),
    ("ingest", "--codec"): ("ingest.codec", ","),
    ("ingest", "--max-pixels"): ("ingest.max_pixels", ","),
    ("ingest", "--alpha"): ("ingest.alpha", ","),
    ("ingest", "--large"): ("ingest.large", ","),
    ("fit", "--colors"): ("fit.colors", ","),
    ("fit", "--sample"): ("per_image.sample", ","),
    ("fit", "--method"): ("per_image.method", ","),
    ("fit", "--algorithm"): ("fit.algorithm", ","),
    ("fit", "--init"): ("fit.init", ","),
    ("fit", "--n-init"): ("fit.n_init", ","),
    ("fit", "--color-space"): ("fit.color_space", ","),
    ("fit", "--tol"): ("fit.tol", ","),
    ("fit", "--max-steps"): ("fit.max_steps", ","),
    ("fit", "--max-iter"): ("fit.max_iter", ","),
    ("fit", "--batch-size"): ("fit.batch_size", ","),
    ("fit", "--seed"): ("fit.seed", ","),
    ("fit", "--k-range"): ("fit.k_range", "-"),
    ("cluster-images", "--groups"): ("cluster_images.groups", ","),
    ("cluster-images", "--descriptor"): ("cluster_images.descriptor", ","),
    ("cluster-images", "--moments-weight"): ("cluster_images.moments_weight", ","),
    ("cluster-images", "--batch-size"): ("cluster_images.batch_size", ","),
    ("cluster-images", "--tol"): ("cluster_images.tol", ","),
    ("cluster-images", "--max-steps"): ("cluster_images.max_steps", ","),
    ("cluster-images", "--seed"): ("cluster_images.seed", ","),
    ("quantize", "--color-space"): (None, ","),  # the default is a rule, not a value
    ("export", "--format"): ("export.format", ","),
    ("export", "--png-level"): ("export.png_level", ","),
    ("report", "--samples"): ("report.samples", ","),
    ("report", "--seed"): ("report.seed", ","),
    ("report", "--worst"): ("report.worst", ","),
}


def test_help_defaults_are_the_config_defaults():
    """A default in a help text is the config's (not a copy that can drift), and every option
    that overrides a config key with a default says it."""
    import click

    from streamq.config import describe

    defaults = {key: value for key, value, _ in describe()}
    shown = {}
    for name, cmd in cli.commands.items():
        ctx = click.Context(cmd, info_name=name)
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.show_default:
                help_text = " ".join(param.get_help_record(ctx)[1].split())
                if "[default: " in help_text:
                    shown[(name, param.opts[-1])] = help_text
    assert set(shown) == set(HELP_DEFAULTS)
    for where, (key, sep) in HELP_DEFAULTS.items():
        if key is None:
            continue
        value = defaults[key]
        text = sep.join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert f"[default: {text}" in shown[where], (where, key, shown[where])
    assert "[default: 2,6,30]" in shown[("fit", "--colors")]  # per_image.colors


@pytest.mark.parametrize("name", ["distributed.client", "distributed.batched"])
def test_client_side_dask_logs_stay_quiet_below_verbose(name):
    """A lost scheduler makes Dask's client and its batched comm log tracebacks; below -v
    the CLI's one line is all a user sees, and -v lets them through again."""
    import logging

    from streamq import console

    target = logging.getLogger(name)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, level = Keep(), target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        with console_state():
            console.set_log_level(logging.WARNING)
            target.info("Batched Comm Closed")
            target.error("lost the connection")
            assert seen == []
            console.set_log_level(logging.INFO)
            target.info("Batched Comm Closed")
            assert seen == ["Batched Comm Closed"]
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
