"""No credential given as a storage option (or in a URL) is written anywhere or printed.

Every command runs with a known secret in its storage options (local stores accept and
ignore them, so the whole pipeline runs on disk; URLs with bad values fail before any network
use), then every file written under the test's folder (stores, outputs, report, lock files,
Dask's scratch space: TMPDIR points there) and everything printed is searched for the secret.

A job killed while it holds its lock, and ``run`` on a local Dask cluster (worker processes),
are real processes; the other commands run in this process through click as a fresh
``streamq`` process would (:func:`_invoke`: its command line, working folder, TMPDIR, log
handler on its own stderr, no credential remembered from an earlier command, every warning
kept as printed), which saves starting Python, Dask and zarr again for each of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import console_state, streamq_cmd
from PIL import Image

from streamq.cli.main import cli
from streamq.examples import make_collection

SECRET = f"S3cr3t{uuid.uuid4().hex}"


def _options(secret: str) -> dict:
    return {"key": f"id-{secret}", "secret": secret,
            "endpoint_url": f"http://someone:{secret}@127.0.0.1:9",
            "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": secret}}


FLAGS = ["--storage-option", f"secret={SECRET}", "--storage-option", f"key=id-{SECRET}",
         "--storage-option", f"endpoint_url=http://someone:{SECRET}@127.0.0.1:9",
         "--storage-option", f"client_kwargs.aws_session_token={SECRET}",
         "--storage-option", "client_kwargs.region_name=eu-west-1"]


class LockWatcher(threading.Thread):
    """Keeps a copy of every version of every ``*.lock*`` file that appears in a folder."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.seen: dict[str, bytes] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in self.folder.glob("*.lock*"):
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                self.seen.setdefault(f"{p.name}:{hash(data)}", data)
            time.sleep(0.005)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    make_collection(work / "src", 8, seed=2, min_side=24, max_side=64)
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "STREAMQ_SCHEDULER": ""}
    env.pop("STREAMQ_SCHEDULER")
    # what the commands run in this process see: the same folder, TMPDIR and environment
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(work / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(work / "tmp"))
    monkeypatch.delenv("STREAMQ_SCHEDULER", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # ingest sets it
    watcher = LockWatcher(work)
    watcher.start()
    yield work, env, watcher
    watcher.stop.set()
    watcher.join()


@dataclass
class Printed:
    """What an in-process command printed, and how it ended."""

    exit_code: int
    stdout: str
    stderr: str
    warned: list[str]  # the text of every warning raised, as Python would print it


def _invoke(monkeypatch: pytest.MonkeyPatch, *args: str) -> Printed:
    """``streamq ARGS`` run in this process as a fresh ``streamq`` process would run it: its
    command line in ``sys.argv`` (what the lock file records), no credential remembered from
    an earlier command (each process starts with none), the ``streamq`` log handler on this
    command's stderr, and every warning kept (a process prints them on stderr)."""
    from streamq import redact

    monkeypatch.setattr(sys, "argv", ["streamq", *args])
    monkeypatch.setattr(redact, "_seen", set())
    with console_state(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(cli, list(args), prog_name="streamq")
    return Printed(res.exit_code, res.stdout, res.stderr,
                   [warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                    for w in caught])


def _no_secret_in_files(root: Path, skip: set[Path]) -> int:
    """Search every file under ``root`` (but ``skip``) for the secret; return files searched."""
    found, n = [], 0
    for p in root.rglob("*"):
        if p.is_file() and p not in skip:
            n += 1
            if SECRET.encode() in p.read_bytes():
                found.append(str(p.relative_to(root)))
    assert not found, f"the secret was written to {found}"
    return n


def test_no_command_writes_or_prints_a_storage_option_secret(sandbox, monkeypatch):
    work, env, watcher = sandbox
    printed: list[str] = []

    def run(*args: str) -> Printed:
        res = _invoke(monkeypatch, "-v", *args)
        printed.extend([res.stdout, res.stderr, *res.warned])
        assert res.exit_code == 0, (args, res.stderr)
        return res

    # `run` from a YAML file with storage options, on a local Dask cluster (worker processes),
    # as a real process on a store of its own: it runs beside the commands below.
    cfg = work / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "store": "r.zarr", "storage_options": _options(SECRET), "ingest": {"source": "src"},
        "dask": {"n_workers": 1}, "fit": {"colors": 3, "max_steps": 8, "batch_size": 256},
        "cluster_images": {"enabled": True, "groups": 2},
        "export": {"out": "r-out"}, "report": {"out": "r-report.html"}}))
    pipeline = subprocess.Popen(streamq_cmd("-v", "run", str(cfg)), cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Killed once it holds the lock (the lock file stays behind), then run again: the
        # take-over names the killed job by its command line.
        lock = work / "s.zarr.lock"
        ingest = ["ingest", "src", "s.zarr", "--chunk-pixels", "4096", "--scheduler", "threads"]
        job = subprocess.Popen(streamq_cmd(*ingest, *FLAGS), cwd=work, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not lock.exists():
            assert job.poll() is None, job.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.002)
        job.kill()
        printed.extend(job.communicate())
        record = json.loads(lock.read_bytes())
        assert record["command"] == (
            "streamq ingest src s.zarr --chunk-pixels 4096 --scheduler threads --storage-option "
            "'secret=***' --storage-option 'key=***' --storage-option "
            "'endpoint_url=http://***@127.0.0.1:9' --storage-option "
            "'client_kwargs.aws_session_token=***' --storage-option "
            "client_kwargs.region_name=eu-west-1")
        assert os.stat(lock).st_mode & 0o777 == 0o600
        res = run(*ingest, *FLAGS)
        assert "Removed the stale lock" in res.stderr  # it names the killed job's command ...
        assert "'secret=***'" in res.stderr  # ... without its secret

        # Every other command on the local store, the secret in its storage options.
        run("fit", "s.zarr", "-k", "4", "--max-steps", "8", "--batch-size", "256",
            "--scheduler", "threads", *FLAGS)
        run("fit", "s.zarr", "--per-image", "--colors", "2,3", "--scheduler", "threads", *FLAGS)
        run("quantize", "s.zarr", "--scheduler", "threads", *FLAGS)
        run("cluster-images", "s.zarr", "--groups", "2", "--scheduler", "threads", *FLAGS)
        run("export", "s.zarr", "out", "--scheduler", "threads", *FLAGS)
        run("export", "s.zarr", "out.zarr", "--zarr", "--per-image", "2,3", "--scheduler",
            "threads", *FLAGS)
        run("report", "s.zarr", "report.html", *FLAGS)  # plain HTML: no browser involved
        assert (work / "report.html").stat().st_size > 10_000
        assert len(list((work / "out").rglob("*.png"))) == 8

        out, err = pipeline.communicate(timeout=300)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.communicate()
    assert pipeline.returncode == 0, err
    printed.extend([out, err])
    assert (work / "r-report.html").is_file()
    assert len(list((work / "r-out").rglob("*.png"))) == 8

    # Nothing printed, nothing written, no lock file seen at any moment holds the secret.
    assert not [t for t in printed if SECRET in t]
    assert {k.split(":")[0] for k in watcher.seen} >= {"s.zarr.lock", "r.zarr.lock"}
    assert not [k for k, v in watcher.seen.items() if SECRET.encode() in v]
    assert _no_secret_in_files(work, skip={cfg}) > 100
    assert any((work / "tmp").rglob("*"))  # Dask's scratch space was there to search


def test_bad_storage_options_are_refused_without_showing_them(tmp_path, monkeypatch):
    """Each refusal is one line (click's usage error for a malformed flag) without the value;
    each case has its own secret, so none is hidden by one noted before (and each runs as a
    fresh process would: :func:`_invoke`)."""
    secrets = {}

    def secret(name: str) -> str:
        return secrets.setdefault(name, f"S3cr3t{uuid.uuid4().hex}")

    store = tmp_path / "s.zarr"
    store.mkdir()
    cases = {
        "no KEY=": ["info", str(store), "--storage-option", secret("no KEY=")],
        "credentials in the URL": ["info", f"s3://someone:{secret('url')}@bucket/x.zarr"],
        "credentials in endpoint_url": [
            "info", "s3://bucket/x.zarr", "--storage-option",
            f"client_kwargs.endpoint_url=http://someone:{secret('endpoint')}@127.0.0.1:1"],
        "unreachable endpoint": [
            "info", "s3://bucket/x.zarr", "--storage-option", "endpoint_url=http://127.0.0.1:1",
            "--storage-option", "key=id", "--storage-option", f"secret={secret('unreachable')}"],
        "not accepted by s3fs": [
            "info", "s3://bucket/x.zarr", "--storage-option", "endpoint_url=http://127.0.0.1:1",
            "--storage-option", f"client_kwargs={secret('s3fs')}"],
    }
    for name, value in {"not JSON": {"secret": "", "since": "2020-01-01"},
                        "not a mapping": "secret="}.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        text = yaml.safe_dump({"storage_options": value}).replace("'2020-01-01'", "2020-01-01")
        path.write_text(text.replace("secret: ''", f"secret: {secret(name)}")
                        .replace("secret=", f"secret={secret(name)}"))
        assert secret(name) in path.read_text()
        cases[name] = ["info", str(store), "--config", str(path)]
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    expected = {"no KEY=": "a value without '='", "credentials in the URL": "s3://***@bucket",
                "credentials in endpoint_url": "storage option 'client_kwargs.endpoint_url' "
                                               "(http://***@127.0.0.1:1) has credentials",
                "unreachable endpoint": "cannot reach http://127.0.0.1:1",
                "not accepted by s3fs": "storage options for s3://bucket/x.zarr were not accepted "
                                        "by s3fs (AttributeError: ",
                "not JSON": "{'secret': '***', 'since': '***'}",
                "not a mapping": "of type str (not shown"}
    for name, args in cases.items():
        res = _invoke(monkeypatch, *args)
        err = res.stderr
        assert secret(name) not in "".join([res.stdout, err, *res.warned]), (name, err)
        assert expected[name] in err, (name, err)
        if name == "no KEY=":
            assert res.exit_code == 2  # click's usage error
        else:
            assert res.exit_code == 1
            assert err.count("\n") == 1, (name, err)
            assert err.startswith("error: "), (name, err)


def test_redaction_rules():
    from streamq import redact

    opts = _options("hunter2-secret")
    shown = redact.options(opts)
    assert shown == {"key": "***", "secret": "***", "endpoint_url": "http://***@127.0.0.1:9",
                     "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "***"}}
    line = ("streamq run c.yaml --storage-option secret=hunter2-secret --storage-option "
            "'endpoint_url=http://u:hunter2-secret@h:9' --storage-option=key=k3y-value "
            "--storage-option anon=true --storage-option \"secret=with space")
    assert redact.command(line) == (
        "streamq run c.yaml --storage-option secret=*** --storage-option "
        "'endpoint_url=http://***@h:9' --storage-option=key=*** --storage-option anon=true "
        "--storage-option \"secret=***\"")
    assert redact.argv(["streamq", "--storage-option", "hunter2-secret", "s3://a:b@c/d"]) == [
        "streamq", "--storage-option", "***", "s3://***@c/d"]
    redact.remember(opts)
    assert redact.text("boom: hunter2-secret at http://x:y@h") == "boom: *** at http://***@h"


def test_authentication_methods_are_not_secrets():
    """gcsfs's ``token="anon"`` (a way to authenticate, not a credential) is shown and never
    scrubbed from text, while a token that is a credential is; a GCP project is a place."""
    from streamq import redact

    assert redact.options({"token": "anon", "project": "p1"}) == {"token": "anon", "project": "p1"}
    assert redact.options({"token": "ya29.a-real-token"}) == {"token": "***"}
    before = set(redact._seen)
    try:
        redact.remember({"token": "anon", "project": "my-project"})
        assert redact.text("anon=true in my-project") == "anon=true in my-project"
        redact.remember({"token": "ya29.a-real-token"})
        assert redact.text("bad token ya29.a-real-token") == "bad token ***"
    finally:
        redact._seen.clear()
        redact._seen.update(before)

