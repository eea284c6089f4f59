"""SIGINT and SIGTERM: cleanup, then status 128 + signal and one line; a second signal ends the
process at once. (Whole commands interrupted inside each stage: test_pipeline.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

MESSAGE = "streamq: interrupted by {}; rerun the same command to resume\n"

# ``work`` runs under call_exiting_on_signals; it says "ready" on stdout, then keeps Python busy
# for a minute; its ``finally`` writes "cleaned" to the file argv[2]. Mode "gc": a garbage
# collector callback (as Dask registers) sends the process SIGTERM, so its handler runs there,
# where Python swallows exceptions.
SCRIPT = textwrap.dedent("""
    import gc, os, signal, sys, time
    from streamq.cli.signals import call_exiting_on_signals

    mode, marker = sys.argv[1], sys.argv[2]
    sent = []

    def callback(phase, info):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before this returns

    def work():
        try:
            print("ready", flush=True)
            if mode == "gc":
                gc.callbacks.append(callback)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                gc.collect()
                time.sleep(0.01)
            print("finished", flush=True)
        finally:
            with open(marker, "w") as f:
                f.write("cleaned")
            if mode == "slow-cleanup":
                print("cleaning", flush=True)
                time.sleep(60)

    call_exiting_on_signals(work)
""")


def _start(tmp_path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(tmp_path / "marker")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_runs_cleanup_then_exits_with_one_line(tmp_path, sig):
    proc = _start(tmp_path, "plain")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert err == MESSAGE.format(sig.name)
    assert out == ""  # the work did not go on
    assert (tmp_path / "marker").read_text() == "cleaned"


def test_signal_swallowed_by_a_gc_callback_still_interrupts(tmp_path):
    """Python swallows an exception raised in a gc callback (it prints "Exception ignored
    in ..."): the signal's exception is raised again outside, and nothing else is printed."""
    proc = _start(tmp_path, "gc")
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 143
    assert err == MESSAGE.format("SIGTERM")
    assert out == ""  # not after the minute of work
    assert (tmp_path / "marker").read_text() == "cleaned"


def test_second_signal_ends_a_slow_cleanup_at_once(tmp_path):
    proc = _start(tmp_path, "slow-cleanup")
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "cleaning\n"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5
    assert proc.returncode == -signal.SIGTERM  # the default action: no more cleanup
