"""How the agent names the local copy of a repository path (shared with the interposer).

Pure and light on imports: the interposer imports it at start-up to follow
renames of copies that guests hold open.
"""

from __future__ import annotations

import hashlib

__all__ = ["object_name"]


def object_name(path: str) -> str:
    """The file name of ``path``'s local copy in the cache's objects directory."""
    return hashlib.sha256(path.encode()).hexdigest()[:40]
