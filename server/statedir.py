"""Where a server keeps its state for a served directory (standard library only).

The served directory is the user's: the server's staging area and commit
journal live in a *state directory* outside it, on the same mount (see
:mod:`server.backends.local`). This module only names the default; it is
light on imports because ``synthfs run --data`` picks the embedded server's
state directory before it loads anything else.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["default_state_dir", "repo_id_of"]


def repo_id_of(root: str | os.PathLike[str]) -> str:
    """A stable id of the repository at ``root`` (same real path, same id)."""
    return hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:16]


def default_state_dir(root: str | os.PathLike[str]) -> str:
    """``$XDG_STATE_HOME/synthfs/server/REPO_ID`` (``~/.local/state`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "synthfs", "server", repo_id_of(root))
