"""Real processes for the fault suite: guests under ``synthfs run``, a separate stack.

Trusts nothing it checks: what a guest saw comes from the guest's own report
(one JSON line per operation on its stdout), what was kept comes from the
repository directory on the host after every process has gone.

* :class:`Guest` — ``synthfs run ... -- python3 -c PROGRAM``, its stdout read
  line by line in a thread, every wait bounded (a hang fails the test, it
  never stalls the suite).
* :data:`OPS_LOOP` — a guest that loops over stat, read-back, write+close and
  listing on ``/data``, timing each call and reporting its errno.
* :func:`stray_files` — what a repository holds outside the server's staging
  area besides the names a test expects.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "agent"))  # agent_stack: the separately started stack

from agent_stack import Stack  # noqa: E402
from helpers import synthfs_command  # noqa: E402

__all__ = [
    "OPS_LOOP",
    "STARTED",
    "Guest",
    "Stack",
    "alive",
    "stray_files",
]

#: The guest interpreter: the system python (what a user's program would be).
PYTHON = "/usr/bin/python3"

#: A guest that runs operations on /data until the host file argv[1] exists or
#: argv[2] seconds have passed. Each line: {"i", "op", "errno", "dt", ...};
#: "writes" lines name a file whose close returned 0 and its content.
OPS_LOOP = r"""
import errno, json, os, sys, time
stop, limit = sys.argv[1], float(sys.argv[2])
ref = open("/data/ref", "rb").read()
def say(**kw):
    print(json.dumps(kw), flush=True)
t_end = time.monotonic() + limit
i = 0
while not os.path.exists(stop) and time.monotonic() < t_end:
    for op in ("stat", "read", "write", "list"):
        t0 = time.monotonic()
        err, extra = 0, {}
        try:
            if op == "stat":
                os.stat("/data/ref")
            elif op == "read":
                with open("/data/ref", "rb") as f:
                    got = f.read()
                if got != ref:
                    extra["torn"] = len(got)
            elif op == "write":
                name = f"/data/out/w{i}"
                body = (f"{i}:" * 20).encode()
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, body)
                finally:
                    os.close(fd)  # the commit: 0 here means acknowledged
                extra["acked"] = name
                extra["body"] = body.decode()
            else:
                os.listdir("/data/out")
        except OSError as e:
            err = e.errno
        say(i=i, op=op, errno=err, dt=round(time.monotonic() - t0, 3), **extra)
    i += 1
    time.sleep(0.05)
say(done=i)
"""


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def stray_files(root: Path, expected: Iterable[str]) -> list[str]:
    """Paths under ``root`` (relative) not in ``expected`` (the server's state is elsewhere)."""
    keep = set(expected)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in [*dirnames, *filenames]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel not in keep:
                out.append(rel)
    return sorted(out)


#: Every Guest started, so a failed test's runs are killed at teardown (conftest).
STARTED: list[Guest] = []


class Guest:
    """One ``synthfs run`` with a Python guest; its stdout lines collected as they come."""

    def __init__(self, source: Sequence[str], program: str, *args: str,
                 cwd: Path | None = None) -> None:
        argv = [*synthfs_command(), "run", *source, "--", PYTHON, "-c", program, *args]
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            cwd=cwd, start_new_session=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""
        STARTED.append(self)

    def kill(self) -> None:
        """SIGKILL the run's whole process group (the session it was started in)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def records(self) -> list[dict]:
        with self._cond:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_for(self, pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
        """Wait (bounded) until ``pred(records)`` holds; False on timeout or guest exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if pred(self.records_unlocked()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    return pred(self.records_unlocked())
                self._cond.wait(min(left, 0.2))

    def records_unlocked(self) -> list[dict]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def finish(self, timeout: float) -> int | None:
        """The exit status of ``synthfs run``, or None if it had to be killed (a hang)."""
        try:
            rc: int | None = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        self._reader.join(10)
        assert self.popen.stderr is not None
        self.stderr = self.popen.stderr.read().decode(errors="replace")
        return rc

    def show(self) -> str:
        return "--- guest stdout (last 40)\n" + "\n".join(self.lines[-40:]) + \
            f"\n--- synthfs stderr\n{self.stderr[-4000:]}"
