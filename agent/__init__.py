"""The trusted agent: holds the session token, owns the content cache, serves the interposer."""

from __future__ import annotations

import os

__all__ = ["default_cache_dir"]


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/synthfs``, or ``~/.cache/synthfs``.

    Here rather than in :mod:`agent.cache` (which re-exports it): the embedded
    launcher needs the name without that module's imports (sqlite3, the protocol).
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "synthfs")
