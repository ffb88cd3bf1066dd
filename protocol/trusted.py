"""The one list of what is trusted on a host: the paths no guest may name, whatever the policy.

Every trusted part contributes what it holds (:class:`Kind` says what each
item is, ``SECURITY.md`` "What no guest may name" lists them) and the
supervisor refuses the union to every guest, for every call, before the
policy is asked:

* the **server** (``Registered.trusted_paths``): the served directory (the data
  root: a guest reads it through ``/data`` and its policy, never through its
  host path), its state directory (staged uploads, the commit journal), its
  bootstrap key and CURVE secret key files, its ``ipc://`` sockets;
* the **agent** (``Welcome.refused_paths``): its content cache, its socket and
  its lease channel, its bootstrap key and CURVE secret key files, the
  server's ``ipc://`` sockets it connects to (a guest that could replace them
  would be the server to this agent), plus the server's list when the server
  is on this host (``ipc://``, loopback ``tcp://``), plus ``--refuse`` paths;
* the **embedded launcher** (``synthfs run --data``): its private work
  directory (sockets, logs, the bootstrap key until both are ready);
* the **supervisor**: its private directory (directory placeholders), and the
  agent's socket it connects to;
* **every** run's private directories, wherever they are, by their name
  (:mod:`synthfs.private_dirs`).

Trusts the paths its callers hold (their own command lines); the server's
list reaches the agent over the authenticated link. A path is refused with
everything below it, by its real path (symlinks resolved once, here); there
are no pid files.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable

__all__ = ["Kind", "refused", "socket_path"]



class Kind(enum.Enum):
    """What a trusted path is (for messages and the docs; every kind is refused alike)."""

    DATA_ROOT = "the served directory"
    STATE = "the server's state directory"
    BOOTSTRAP_KEY = "a bootstrap key file"
    CURVE_SECRET = "a CURVE secret key file"  # noqa: S105 - a description, not a secret
    SERVER_SOCKET = "a server socket"
    SERVER_OWN = "a path the server named as its own (any kind above)"
    AGENT_SOCKET = "the agent's socket"
    LEASE_SOCKET = "the agent's lease channel"
    CACHE = "the agent's content cache"
    WORKDIR = "the embedded stack's work directory"
    SUPERVISOR_DIR = "the supervisor's private directory"


def socket_path(endpoint: str) -> str:
    """The file of an ``ipc://`` endpoint ("" for any other transport)."""
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""


def refused(items: Iterable[tuple[Kind, str | os.PathLike[str] | None]]) -> tuple[str, ...]:
    """The real paths of ``items`` (absent or empty ones skipped), in order, once each.

    Both the path as given (made absolute) and its real path are kept: the
    supervisor compares real paths, and a path that does not exist yet (a
    socket about to be bound) may become real later under its given name.
    """
    out: dict[str, None] = {}
    for _kind, path in items:
        if not path:
            continue
        given = os.path.abspath(os.fspath(path))
        out[given] = None
        out[os.path.realpath(given)] = None
    return tuple(out)
