"""Configuration: every key validated with a one-line message; defaults; overrides."""

from __future__ import annotations

import pytest
import yaml

from streamq.config import describe, load_config, parse_config
from streamq.errors import ConfigError


@pytest.mark.parametrize(("data", "message"), [
    ({"ingest": {"chunk_pixel": 3}}, "unknown key 'ingest.chunk_pixel'"),
    ({"ingst": {}}, "unknown key 'ingst'"),
    ({"ingest": {"codec": "gzip"}}, "key 'ingest.codec' has value 'gzip', expected one of 'zstd', 'lz4', 'none'"),
    ({"ingest": {"chunk_pixels": 10}}, "key 'ingest.chunk_pixels' has value 10, expected an integer in 1024..2**28"),
    ({"ingest": {"chunk_pixels": 10**12}}, "expected an integer in 1024..2**28"),
    ({"ingest": {"chunk_pixels": "big"}}, "key 'ingest.chunk_pixels' has value 'big', expected an integer"),
    ({"ingest": {"strict": "yes"}}, "key 'ingest.strict' has value 'yes', expected true or false"),
    ({"ingest": {"background": [0, 0]}}, "key 'ingest.background' has value [0, 0], expected a list of 3 values"),
    ({"ingest": {"background": [0, 0, 256]}}, "expected three integers in 0..255"),
    ({"dask": {"n_workers": 0}}, "key 'dask.n_workers' has value 0, expected an integer >= 1"),
    ({"ingest": 5}, "key 'ingest' must be a mapping"),
    ({"storage_options": 5}, "key 'storage_options' has value of type int (not shown: it may "
                             "hold credentials), expected a mapping of option names to plain values"),
    ({"storage_options": ["sEcReT"]}, "key 'storage_options' has value of type list (not shown"),
    ({"storage_options": {"secret": "sEcReT", "t": {1, 2}}},
     "key 'storage_options' has value {'secret': '***', 't': '***'}, expected a mapping"),
])
def test_bad_values_one_line(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML at line"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_overrides_win_and_none_is_ignored(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingest:\n  codec: lz4\n  chunk_pixels: 2048\n")
    cfg = load_config(p, **{"ingest.codec": "none", "ingest.chunk_pixels": None})
    assert cfg.ingest.codec == "none"
    assert cfg.ingest.chunk_pixels == 2048


def test_env_scheduler(monkeypatch):
    monkeypatch.setenv("STREAMQ_SCHEDULER", "tcp://127.0.0.1:9")
    assert parse_config({}).dask.scheduler == "tcp://127.0.0.1:9"
    assert parse_config({"dask": {"scheduler": "threads"}}).dask.scheduler == "threads"


def test_env_overrides_any_key_between_file_and_flags(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("fit:\n  colors: 8\n  seed: 3\nper_image:\n  colors: [2, 6]\n")
    monkeypatch.setenv("STREAMQ_FIT__COLORS", "32")
    monkeypatch.setenv("streamq_ingest__strict", "true")  # any case, YAML values
    monkeypatch.setenv("STREAMQ_PER_IMAGE__COLORS", "[4, 9]")
    monkeypatch.setenv("STREAMQ_STORAGE_OPTIONS__CLIENT_KWARGS__REGION_NAME", "eu")
    monkeypatch.setenv("STREAMQ_STORE", "/data/x.zarr")
    monkeypatch.setenv("STREAMQ_REPORT__OUT", "")  # set to nothing: not set
    monkeypatch.setenv("STREAMQ_CHROMIUM", "/usr/bin/chromium")  # not a config key: ignored
    cfg = load_config(p)
    assert (cfg.fit.colors, cfg.fit.seed, cfg.ingest.strict) == (32, 3, True)
    assert cfg.per_image.colors == (4, 9)
    assert cfg.storage_options == {"client_kwargs": {"region_name": "eu"}}
    assert (cfg.store, cfg.report.out) == ("/data/x.zarr", None)
    assert load_config(p, **{"fit.colors": 64}).fit.colors == 64  # flags win
    assert parse_config({}).fit.colors == 32  # library calls see it too
    monkeypatch.setenv("STREAMQ_DASK__SCHEDULER", "sync")
    monkeypatch.setenv("STREAMQ_SCHEDULER", "threads")  # the older name ranks lower
    assert parse_config({"dask": {"scheduler": "tcp://127.0.0.1:9"}}).dask.scheduler == "sync"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("STREAMQ_FIT__COLORS", "many", "environment variable STREAMQ_FIT__COLORS: key 'fit.colors' "
                                    "has value 'many', expected an integer"),
    ("STREAMQ_FIT__COLORS", "1", "environment variable STREAMQ_FIT__COLORS: key 'fit.colors' has "
                                 "value 1, expected an integer from 2 to 65536"),
    ("STREAMQ_FIT__COLOURS", "8", "environment variable STREAMQ_FIT__COLOURS: unknown key "
                                  "'fit.colours'"),
    ("STREAMQ_INGST__CODEC", "lz4", "environment variable STREAMQ_INGST__CODEC: unknown key 'ingst'"),
    ("STREAMQ_INGEST__CODEC", "[lz4", "environment variable STREAMQ_INGEST__CODEC has value '[lz4', "
                                      "which is not a YAML value"),
    ("STREAMQ_STORAGE_OPTIONS", "sEcReT", "environment variable STREAMQ_STORAGE_OPTIONS: key "
                                          "'storage_options' has value of type str (not shown"),
])
def test_env_bad_value_one_line_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_config()
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert "sEcReT" not in str(err.value)


def test_default_yaml_lists_every_key_with_its_default():
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "default.yaml").read_text())
    sections = {key.split(".")[0] for key, _, _ in describe() if "." in key}
    flat = {}
    for section, values in data.items():
        if section in sections:
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v, _ in describe()}
    assert flat == expected
    parse_config(data)  # and it is valid


def test_storage_options_from_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("store: s3://bucket/x.zarr\nstorage_options:\n  endpoint_url: http://127.0.0.1:9000\n"
                 "  client_kwargs: {region_name: us-east-1}\nexport:\n  out: s3://bucket/out\n")
    cfg = load_config(p, **{"storage_options.key": "k", "storage_options.client_kwargs.region_name": "eu"})
    assert cfg.store == "s3://bucket/x.zarr"  # URLs are not resolved against the file's folder
    assert cfg.export.out == "s3://bucket/out"
    assert cfg.storage_options == {"endpoint_url": "http://127.0.0.1:9000", "key": "k",
                                   "client_kwargs": {"region_name": "eu"}}
    assert parse_config({}).storage_options == {}
