"""Who holds a store's lock, and whether that job is gone: the owner record and its rules.

The record is the JSON object a lock file (or lock object) holds (``docs/store-format.md``):
the job's token, command line, stage, host, pid, user, start time, the identity of its
process (start time, boot id, pid namespace) and its heartbeat. :func:`owner_record` writes
it, :func:`parse` reads it back (any bytes: an unreadable file gets a token of its own), and
:func:`stale_reason` judges it: on the same host, boot and pid namespace by the pid, anywhere
else by the age of the heartbeat. The one-line messages that name an owner live here too.
Nothing here touches a file: the backends (:mod:`streamq.lock.local`,
:mod:`streamq.lock.objects`) move the bytes.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shlex
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from streamq import redact
from streamq._version import __version__
from streamq.clock import timestamp

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_STALE_AFTER", "LOCK_FORMAT", "LOCK_SUFFIX", "LockOwner",
           "claim_record", "hostname", "locked_message", "lost_message", "owner_record", "parse",
           "same_instance", "stale_reason", "trust_until"]

LOCK_SUFFIX = ".lock"
LOCK_FORMAT = 1
DEFAULT_STALE_AFTER = 60.0
DEFAULT_HEARTBEAT = 10.0


@dataclass
class LockOwner:
    """The job named in a lock file (``raw`` keeps every field as read)."""

    token: str
    command: str = "?"
    operation: str = "?"
    host: str = "?"
    pid: int | None = None
    user: str = "?"
    started: str = "?"
    process_start: float | None = None
    heartbeat: float | None = None
    heartbeat_interval: float | None = None
    stale_after: float | None = None
    boot_id: str | None = None
    pid_ns: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """One line: command, pid, host, user, start time (credentials never shown, even
        from a lock written by an older streamq)."""
        return (f"{redact.command(self.command)!r} ({self.operation}, pid {self.pid} on host "
                f"{self.host}{self._namespace_note()}, user {self.user}, started {self.started})")

    def _namespace_note(self) -> str:
        if self.host != hostname() or not self.raw or same_instance(self):
            return ""
        return ", another pid namespace or boot"


def parse(data: bytes) -> LockOwner:
    """The owner recorded in lock bytes; an unreadable file gets a token from its bytes."""
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or not isinstance(raw.get("token"), str):
            raise ValueError("no token")
    except (ValueError, UnicodeDecodeError):
        return LockOwner(token="unreadable-" + hashlib.sha256(data).hexdigest()[:16],
                         command="(unreadable lock file)", raw={})

    def num(key: str) -> float | None:
        v = raw.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    def text(key: str) -> str | None:
        v = raw.get(key)
        return v if isinstance(v, str) else None

    pid = raw.get("pid")
    return LockOwner(
        token=raw["token"], command=str(raw.get("command", "?")),
        operation=str(raw.get("operation", "?")), host=str(raw.get("host", "?")),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        user=str(raw.get("user", "?")), started=str(raw.get("started", "?")),
        process_start=num("process_start"), heartbeat=num("heartbeat"),
        heartbeat_interval=num("heartbeat_interval"), stale_after=num("stale_after"),
        boot_id=text("boot_id"), pid_ns=text("pid_ns"), raw=raw)


def hostname() -> str:
    return socket.gethostname()


_BOOT_ID: list[str | None] = []


def _boot_id() -> str | None:
    """This machine's boot id (Linux; None elsewhere): another boot means another process."""
    if not _BOOT_ID:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID.append(f.read().strip() or None)
        except OSError:
            _BOOT_ID.append(None)
    return _BOOT_ID[0]


def _pid_ns() -> str | None:
    """This process's pid namespace (``pid:[4026531836]``; None where there is none)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def same_instance(owner: LockOwner) -> bool:
    """Whether the owner's pid means a process we can look at: same host name, same boot,
    same pid namespace (containers sharing a host name each have their own)."""
    return (owner.host == hostname() and owner.boot_id == _boot_id()
            and owner.pid_ns == _pid_ns())


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def stale_reason(owner: LockOwner, age: float | None, default_stale_after: float) -> str | None:
    """Why the owner of a lock is gone, or None while it may still be running.

    ``age`` is how long ago the lock file was written (used for unreadable files only).
    """
    stale_after = owner.stale_after or default_stale_after
    if not owner.raw:  # unreadable: a create without hard links in progress, or junk
        if age is not None and age > stale_after:
            return f"unreadable lock file last written {age:.0f} s ago"
        return None
    if owner.pid is not None and same_instance(owner):
        import psutil

        try:
            proc = psutil.Process(owner.pid)
            status = proc.status()
            started = proc.create_time()
        except psutil.NoSuchProcess:
            return f"pid {owner.pid} is not running on this host"
        except (psutil.AccessDenied, OSError):
            return None  # exists, and we may not look at it: assume alive
        if status == psutil.STATUS_ZOMBIE:
            return f"pid {owner.pid} has exited (zombie)"
        if owner.process_start is not None and abs(started - owner.process_start) > 1.0:
            return f"pid {owner.pid} is now another process (started at another time)"
        return None
    beat = owner.heartbeat
    if beat is None:
        return "no heartbeat recorded" if age is None or age > stale_after else None
    silent = time.time() - beat
    if silent > stale_after:
        return (f"no heartbeat from host {owner.host}{owner._namespace_note()} for "
                f"{silent:.0f} s (stale after {stale_after:g} s)")
    return None


def _command_line() -> str:
    """This process's command line, as a user would type it (``streamq fit ...``), with
    storage option values and URL credentials redacted."""
    argv = list(sys.argv)
    first = argv[0] if argv else ""
    if os.path.basename(first) == "streamq" or first.endswith(os.path.join("streamq", "cli", "main.py")):
        parts = ["streamq", *argv[1:]]
    else:
        try:
            import psutil

            parts = psutil.Process().cmdline()
        except Exception:
            parts = [sys.executable, *argv]
    text = " ".join(shlex.join(redact.argv(parts)).split())  # one line, nothing secret
    return text if len(text) <= 300 else text[:297] + "..."


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid()) if hasattr(os, "getuid") else "?"



def owner_record(path: str, command: str | None, operation: str, stale_after: float,
                 heartbeat: float) -> dict[str, Any]:
    """A new owner record, with a new token, for this process taking the lock file ``path``
    (``command``: what to show other jobs, default this process's command line)."""
    return {
        "streamq_lock": LOCK_FORMAT, "token": uuid.uuid4().hex,
        "store": path[: -len(LOCK_SUFFIX)],
        "command": redact.command(command) if command else _command_line(),
        "operation": operation, "host": hostname(), "pid": os.getpid(), "user": _user(),
        "started": timestamp(),
        "process_start": _process_start(os.getpid()),
        "boot_id": _boot_id(), "pid_ns": _pid_ns(),
        "heartbeat": time.time(), "heartbeat_interval": float(heartbeat),
        "stale_after": float(stale_after), "streamq_version": __version__,
    }


def trust_until(beat: float, interval: float, stale_after: float) -> float:
    """Until when a lock seen holding our token with heartbeat ``beat`` cannot have been
    taken over by a job that follows the protocol (it needs ``stale_after`` of silence), with
    a margin of half of it for clocks and delays; at most 1.5 heartbeats, so a lock removed by
    hand is noticed soon."""
    return beat + min(1.5 * interval, stale_after / 2)


def lost_message(store: str, owner: LockOwner | str | None) -> str:
    who = owner.describe() if isinstance(owner, LockOwner) else "nobody (its lock file was removed)"
    return (f"{store}: this job's write lock was taken over by {who}; it stopped before writing "
            "more: rerun the same command when that job is done")


def locked_message(store: str, path: str, owner: LockOwner) -> str:
    if not owner.raw:
        return (f"{store} is locked: the lock file {path} is being written, or is unreadable "
                "and younger than lock.stale_after; try again")
    beat = ""
    if not same_instance(owner) and owner.heartbeat is not None:
        beat = f", last heartbeat {max(0.0, time.time() - owner.heartbeat):.0f} s ago"
    what = "lock object" if "://" in path else "lock file"
    return (f"{store} is locked by another job: {owner.describe()}{beat}; wait for it to "
            f"finish ({what} {path}; a lock whose job is gone is taken over automatically)")


def claim_record(record: dict[str, Any], of: str) -> bytes:
    claim = {**record, "token": uuid.uuid4().hex, "claim_of": of, "heartbeat": time.time()}
    return json.dumps(claim, indent=1).encode()
