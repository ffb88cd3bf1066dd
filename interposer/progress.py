"""The progress line ``synthfs run`` shows on its terminal while a cold fetch lasts.

Role: the agent sends ``Progress`` notes on an ``Open`` that fetches a file of
several chunks (:mod:`agent.materialise`); :class:`interposer.remote.Remote`
passes them here. Once the wait has lasted :data:`PROGRESS_AFTER` seconds, one
line (name, bytes, rate) is drawn on the supervisor's own stderr and redrawn
in place; it is erased when the reply comes. Nothing is shown when that stderr
is not a terminal (a pipe, a file, a CI log): scripts see exactly the guest's
output. The supervisor's stderr is its own fd 2, never a guest's fd.

Trusts: the agent's notes (their path and counts are only printed).
"""

from __future__ import annotations

import os
import time
from typing import TextIO

__all__ = ["PROGRESS_AFTER", "ProgressLine", "human_bytes"]

#: Seconds a fetch waits before its progress line appears (``SYNTHFS_PROGRESS_AFTER``
#: in the environment of ``synthfs run`` changes it: 0 shows every multi-chunk fetch).
PROGRESS_AFTER = 1.0


def human_bytes(n: float) -> str:
    """``n`` bytes as a short figure with a binary unit: 1.5 MiB, 512 B."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressLine:
    """One redrawn line on ``stream`` (a terminal), for the request in hand."""

    def __init__(self, stream: TextIO, mount: str, after: float = PROGRESS_AFTER) -> None:
        self._stream = stream
        self._mount = mount.rstrip("/")
        self._after = after
        self._started = 0.0
        self._shown = False

    @classmethod
    def for_terminal(cls, stream: TextIO, mount: str) -> ProgressLine | None:
        """A line on ``stream`` when it is a terminal, else None (nothing to show)."""
        try:
            if not stream.isatty():
                return None
        except (OSError, ValueError):
            return None
        try:
            after = float(os.environ.get("SYNTHFS_PROGRESS_AFTER", PROGRESS_AFTER))
        except ValueError:
            after = PROGRESS_AFTER
        return cls(stream, mount, max(0.0, after))

    def start(self) -> None:
        """A request that may send notes is about to be sent."""
        self._started = time.monotonic()

    def update(self, path: str, done: int, total: int) -> None:
        elapsed = time.monotonic() - self._started
        if elapsed < self._after:
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        shown = self._mount + path if path != "/" else self._mount
        line = (f"synthfs: fetching {shown}: {human_bytes(done)} of {human_bytes(total)}"
                f" ({human_bytes(rate)}/s)")
        self._write(f"\r{line}\x1b[K")
        self._shown = True

    def finish(self) -> None:
        """The reply came: erase the line, if one was drawn."""
        if self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a terminal gone: nothing to show on
