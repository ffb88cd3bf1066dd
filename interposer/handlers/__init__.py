"""Syscall handlers: decode arguments by role, call one shared operation, return an action.

Thin and pure: a handler reads the guest only through :class:`~interposer.ports.Guest`,
reaches the repository only through :class:`~interposer.ports.Repo` and the host
through :class:`~interposer.ports.Host`, and returns an
:mod:`interposer.actions` value; the supervisor applies it. ``open``,
``openat``, ``openat2`` and ``creat`` end in :func:`open_at`; the stat family
in :func:`stat_at`; and so on.

The TOCTOU rule (DESIGN.md §4): a path is read out of the guest once. Host
queries (stat, access, readlink) are answered by the supervisor itself on the
object it opened with ``O_PATH`` and checked, so the kernel never re-reads a
guest path. Calls the kernel must run (open, mkdir, unlink, ...) run on the
checked copy in the scratch page; opens use ``openat2`` with
``RESOLVE_NO_SYMLINKS`` on the resolved path, so a symlink swapped in after the
check fails instead of escaping.

One module per section of the syscall table, path location first:

- :mod:`~synthfs.interposer.handlers.locate`: Locating a path
- :mod:`~synthfs.interposer.handlers.open`: open, openat, openat2, creat
- :mod:`~synthfs.interposer.handlers.stat`: The stat family, access, readlink, statfs
- :mod:`~synthfs.interposer.handlers.tree`: Calls that make or remove names
- :mod:`~synthfs.interposer.handlers.setattr`: Attribute changes
- :mod:`~synthfs.interposer.handlers.xattr`: Extended attributes
- :mod:`~synthfs.interposer.handlers.cwd_exec`: chdir, fchdir, getcwd, execve, execveat
- :mod:`~synthfs.interposer.handlers.fds`: fd calls that may meet a synthetic fd
- :mod:`~synthfs.interposer.handlers.net`: Sockets
- :mod:`~synthfs.interposer.handlers.guards`: Guards
"""

from __future__ import annotations

from synthfs.interposer.handlers import (
    cwd_exec,  # noqa: F401
    fds,  # noqa: F401
    guards,  # noqa: F401
    net,  # noqa: F401
    open,  # noqa: F401
    setattr,  # noqa: F401
    stat,  # noqa: F401
    tree,  # noqa: F401
    xattr,  # noqa: F401
)
from synthfs.interposer.handlers.cwd_exec import EXEC_SCRATCH
from synthfs.interposer.handlers.locate import Loc, Pin, locate
from synthfs.interposer.handlers.open import legacy_open_flags, open_flags_valid

__all__ = [
    "EXEC_SCRATCH",
    "Loc",
    "Pin",
    "legacy_open_flags",
    "locate",
    "open_flags_valid",
]
