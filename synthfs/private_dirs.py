"""The names of synthfs's private directories: how every run's are told from any other.

A run's private directories (the embedded work directory: sockets, logs, the
bootstrap key; the supervisor's placeholders) are on its own list of trusted
paths, but another concurrent run's are not, and may be anywhere its
``$TMPDIR`` said: so they are refused to every guest by their name. Pure, no
I/O beyond the random name; light on imports (the launcher uses it first).
"""

from __future__ import annotations

import os
import re

__all__ = ["PRIVATE_DIR", "filter_cache_dir", "private_dir_name"]

#: Every synthfs process's private directory, wherever it is (any run's, any
#: ``$TMPDIR``): a path component ``synthfs-`` or ``synthfs-run-`` and 12 hex
#: digits. Refused to every guest by name, since another run's (its sockets, its
#: keys) is not on this run's list and may be anywhere its environment said.
#: The kept seccomp filters (:func:`filter_cache_dir`) too, by their name: whatever
#: environment a run has, a guest that rewrote another environment's kept filter
#: would choose the filter of the next run made there.
PRIVATE_DIR = re.compile(r"/synthfs-(?:(?:run-)?[0-9a-f]{12}|filters(?:-\d+)?)(?:/|$)")


def filter_cache_dir() -> str:
    """Where ``synthfs run`` keeps its compiled seccomp filters: ``kept`` in a 0700
    ``$XDG_RUNTIME_DIR/synthfs-filters`` (else ``/tmp/synthfs-filters-UID``), refused to
    every guest of every run by its name (:data:`PRIVATE_DIR`)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (os.path.join(runtime, "synthfs-filters") if runtime
            else f"/tmp/synthfs-filters-{os.getuid()}")
    return os.path.join(base, "kept")


def private_dir_name(prefix: str) -> str:
    """A fresh random name of a private directory (``prefix``: ``synthfs-`` or
    ``synthfs-run-``), one :data:`PRIVATE_DIR` matches."""
    return prefix + os.urandom(6).hex()
