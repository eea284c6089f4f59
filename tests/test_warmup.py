"""``streamq warmup``: its list of kernels and argument types is the one the stages call.

The test session runs ``streamq warmup`` before the first test (conftest's
``pytest_configure``), so numba's cache holds every kernel of that list. A process that then
runs every stage (ingest with a PNG read in strips and one with alpha, the shared fit,
quantize with its SSIM, a dithered export, per-image palettes, more than 256 colours) calls
numba's kernels only with argument types of the list: any other type would be a compile on a
user's first job.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

_SCRIPT = r"""
import json, sys
from click.testing import CliRunner
from numba.core.registry import CPUDispatcher
from streamq.cli.main import cli
from streamq.warmup import GROUPS, kernels

src, work = sys.argv[1], sys.argv[2]
store = work + "/s.zarr"

def ok(*args):
    done = CliRunner().invoke(cli, ["-q", *args, "--scheduler", "sync"])
    assert done.exit_code == 0, (args, done.output)

ok("ingest", src, store, "--max-pixels", "20000")  # the PNG over it is read in strips
ok("fit", store, "--colors", "6")  # mini-batch, then exact Lloyd on the histogram
ok("quantize", store)  # labels and their SSIM
ok("export", store, work + "/out", "--dither")
ok("fit", store, "--colors", "300", "--algorithm", "lloyd", "--max-iter", "2", "--overwrite")
ok("quantize", store)  # uint16 labels
ok("fit", store, "--per-image", "--method", "histogram", "--colors", "2,6")

warm = {(id(d), tuple(sig)) for d, sig in kernels()}
group_of = {id(d): g for g in GROUPS for d, _ in kernels([g])}
extra, used = [], set()
for name, module in sorted(sys.modules.items()):
    if not name.startswith("streamq"):
        continue
    for attr, obj in vars(module).items():
        if isinstance(obj, CPUDispatcher) and obj.__module__ == name:
            for sig in obj.signatures:
                if (id(obj), tuple(sig)) in warm:
                    used.add(group_of[id(obj)])
                else:
                    extra.append(f"{name}.{attr}{tuple(sig)}")
print(json.dumps({"extra": extra, "groups": sorted(used)}))
"""


def test_a_pipeline_after_warmup_calls_only_warmed_kernel_types(faces_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(faces_dir.rglob("*.jpg"))[:4]:
        (src / p.name).write_bytes(p.read_bytes())
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (150, 160, 3), dtype=np.uint8)  # 24,000 px: over --max-pixels
    Image.fromarray(np.repeat(big, 2, axis=0)[:150]).save(src / "wide.png")
    rgba = np.dstack([big[:40, :50], np.where(rng.random((40, 50)) < 0.3, 0, 255)])
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(src / "cut-out.png")  # alpha kept
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(src), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["extra"] == []  # every kernel call was of a warmed type
    # and the run reached a kernel of every group (so the check above covered them)
    assert seen["groups"] == sorted(["ingest", "fit", "per-image", "quantize", "ssim"])


def test_bytecode_of_every_module_is_written_once(tmp_path):
    """``streamq warmup`` writes the bytecode that an editable install lacks (each process
    that imports streamq would compile its modules again), and leaves current files alone."""
    import importlib.util
    import shutil
    from pathlib import Path

    import streamq
    from streamq.warmup import compile_bytecode

    pkg = tmp_path / "streamq"
    shutil.copytree(Path(streamq.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    sources = sorted(pkg.rglob("*.py"))
    assert len(sources) > 50
    assert compile_bytecode(pkg)
    cached = [Path(importlib.util.cache_from_source(str(p))) for p in sources]
    assert all(c.is_file() for c in cached)
    for src, pyc in zip(sources, cached, strict=True):  # stamped with the source's mtime and size
        header = pyc.read_bytes()[:16]
        stat = src.stat()
        assert int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
        assert int.from_bytes(header[12:16], "little") == stat.st_size
    written = [c.stat().st_mtime_ns for c in cached]
    assert compile_bytecode(pkg)
    assert [c.stat().st_mtime_ns for c in cached] == written  # up to date: nothing rewritten
