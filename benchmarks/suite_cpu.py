"""Where the test suite's time goes: CPU seconds per test, in its own process and its children.

As a pytest plugin, it appends one line per test to ``$SUITE_CPU_DIR/cpu-<pid>.tsv`` (node
id, CPU s of the pytest worker process, CPU s of the children it reaped meanwhile, wall s);
run as a script, it sums those lines per test file::

    rm -rf /tmp/suite-cpu && SUITE_CPU_DIR=/tmp/suite-cpu PYTHONPATH=benchmarks \\
        python -m pytest -q -n 2 -p no:cacheprovider -p suite_cpu
    python benchmarks/suite_cpu.py /tmp/suite-cpu

Children's CPU is counted when they are reaped, so a session fixture's processes (the
session's Dask workers, the S3 server) land on the test that ran when they ended.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ANN001, ARG001  (pytest's hook)
    own, kids, t0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.time()
    yield
    folder = Path(os.environ.get("SUITE_CPU_DIR", "/tmp/suite-cpu"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"cpu-{os.getpid()}.tsv", "a") as f:
        f.write(f"{item.nodeid}\t{_cpu(resource.RUSAGE_SELF) - own:.2f}\t"
                f"{_cpu(resource.RUSAGE_CHILDREN) - kids:.2f}\t{time.time() - t0:.2f}\n")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/suite-cpu")
    per_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for path in folder.glob("cpu-*.tsv"):
        for line in path.read_text().splitlines():
            node, own, kids, wall = line.split("\t")
            row = per_file[node.split("::", 1)[0]]
            for i, v in enumerate((own, kids, wall)):
                row[i] += float(v)
    print(f"{'own CPU s':>10} {'children':>9} {'wall s':>8}  file")
    for name, (own, kids, wall) in sorted(per_file.items(), key=lambda kv: -kv[1][2]):
        print(f"{own:10.1f} {kids:9.1f} {wall:8.1f}  {name}")
    total = [sum(r[i] for r in per_file.values()) for i in range(3)]
    print(f"{total[0]:10.1f} {total[1]:9.1f} {total[2]:8.1f}  (all)")


if __name__ == "__main__":
    main()
