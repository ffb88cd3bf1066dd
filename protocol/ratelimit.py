"""A warning log that cannot fill a disk: at most ``burst`` lines per ``period``.

Trusts nothing: it is what the server and the agent log hostile input through
(bad frames, refused CURVE keys, refused registrations), so a flood of them
costs a count, not a line each. The one such limiter in synthfs.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most ``burst`` warnings per ``period`` seconds; then a count of the suppressed."""

    def __init__(self, log: logging.Logger, what: str, burst: int = 20,
                 period: float = 10.0) -> None:
        self.log, self.what = log, what
        self.burst, self.period = burst, period
        self.start, self.count, self.suppressed = time.monotonic(), 0, 0
        self._lock = threading.Lock()  # the server's workers share one (registrations)

    def warning(self, fmt: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self.start > self.period:
                if self.suppressed:
                    self.log.warning("%d more %s in the last %.0f s (not logged)",
                                     self.suppressed, self.what, self.period)
                self.start, self.count, self.suppressed = now, 0, 0
            self.count += 1
            if self.count > self.burst:
                self.suppressed += 1
                return
        self.log.warning(fmt, *args)
