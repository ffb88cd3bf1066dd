"""The shape of a ZeroMQ endpoint given on a command line, checked before ZeroMQ sees it.

ZeroMQ answers a malformed endpoint with ``ZMQError: Invalid argument``
from deep inside ``connect``: :func:`check_endpoint` says instead which
forms a flag takes (``ipc://PATH``, ``tcp://HOST:PORT``). It checks the
shape only (no name lookup, no connection). Trusts nothing: its input is
whatever the user typed.
"""

from __future__ import annotations

__all__ = ["IPC_FORM", "TCP_FORM", "check_endpoint"]

IPC_FORM = "ipc://PATH"
TCP_FORM = "tcp://HOST:PORT"
#: sun_path holds 108 bytes, the terminating NUL included.
_SUN_PATH_MAX = 107


def check_endpoint(flag: str, endpoint: str, *, tcp: bool = True) -> str:
    """``endpoint``, when ZeroMQ can connect to it; else ValueError ``flag ...: expected ...``.

    ``tcp=False``: only ``ipc://`` (the agent's socket is always one).
    """
    if tcp:
        forms = f"{IPC_FORM} or {TCP_FORM}, e.g. tcp://127.0.0.1:7700"
    else:
        forms = f"{IPC_FORM}, e.g. ipc:///run/synthfs/agent.sock"
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not path:
            raise ValueError(f"{flag} {endpoint}: the socket path is missing (expected {forms})")
        if len(path.encode("utf-8", "surrogateescape")) > _SUN_PATH_MAX:
            raise ValueError(f"{flag} {endpoint}: a socket path is at most {_SUN_PATH_MAX} bytes")
        return endpoint
    if tcp and endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://"):].rpartition(":")
        if sep and host and host != "*" and port.isdigit() and 0 < int(port) < 65536:
            return endpoint
        raise ValueError(f"{flag} {endpoint}: expected {TCP_FORM}, e.g. tcp://127.0.0.1:7700")
    if endpoint.startswith("tcp://"):
        raise ValueError(f"{flag} {endpoint}: takes a Unix socket only (expected {forms})")
    raise ValueError(f"{flag} {endpoint}: not an endpoint (expected {forms})")
