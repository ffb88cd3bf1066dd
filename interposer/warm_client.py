"""The warm start's thin client: ``synthfs run --warm`` hands itself to the warm supervisor.

``synthfs run --warm --agent EP -- CMD`` does not import the interposer. This
process connects to the warm supervisor (``synthfs warm``, already running
with everything imported: :mod:`interposer.warm`), sends its run arguments,
working directory, environment and stderr, and waits. A supervisor forked for
this run seizes this very process with ptrace and sends back the compiled
seccomp filter and the command; this process loads the filter and ``execve``s
the command: the guest keeps this pid, its parent (the user's shell), session,
process group and terminal, and its exit status goes to the shell as natively.

Trusts the supervisor only once the socket's directory is this user's and
private, and the peer is this user's (``SO_PEERCRED``) and not traced (no guest). Imports ``os``,
``_socket`` and (for the filter) ``ctypes``: nothing of the interposer.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's enums cost ~8 ms
import _socket
import os
import sys

__all__ = ["COLD", "VERSION", "default_socket", "requested", "run", "sandboxed"]

#: the first bytes of a request, and what a supervisor of another version refuses
VERSION = b"synthfs-warm/1\0"
#: :func:`run`'s answer when the run is to start the usual way (no supervisor, --data...)
COLD = -1
#: seconds the client waits for the warm supervisor's answer
ANSWER_TIMEOUT = 30.0
_SO_PEERCRED = 17
_SO_PEERPIDFD = 77
_SIGINT, _SIGPIPE, _SIGXFSZ = 2, 13, 25


def default_socket() -> str:
    """The warm supervisor's socket: ``$SYNTHFS_WARM_SOCKET``, else a private directory's."""
    named = os.environ.get("SYNTHFS_WARM_SOCKET")
    if named:
        return named
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "synthfs-warm") if runtime else f"/tmp/synthfs-warm-{os.getuid()}"
    return os.path.join(base, "warm.sock")


def requested(argv: list[str]) -> bool:
    """Whether ``synthfs run ARGV`` asks for the warm start (``--warm`` before the command,
    or ``SYNTHFS_WARM=1``)."""
    if os.environ.get("SYNTHFS_WARM", "") not in ("", "0"):
        return True
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--warm":  # (or a command's own, without "--": the run parses it right)
            return True
    return False


def _say(message: str) -> None:
    try:  # noqa: SIM105 - contextlib is not worth its import here
        os.write(2, f"synthfs run: {message}\n".encode("utf-8", "surrogateescape"))
    except OSError:
        pass


def _private(path: str) -> str | None:
    """Why the socket at ``path`` is not to be trusted (None: its directory is ours, 0700)."""
    try:
        st = os.stat(os.path.dirname(path) or ".")
    except OSError as exc:
        return exc.strerror or str(exc)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return f"{os.path.dirname(path)} is not a private directory of this user"
    return None


def _recv_exact(sock: _socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        if not chunk:
            raise EOFError
        got += chunk
    return got


def run(argv: list[str]) -> int:
    """Start ``synthfs run ARGV`` warm: never returns when the command runs; else its
    exit status, or :data:`COLD` (say so, then start the usual way)."""
    # A Ctrl-C from here on ends this process as it ends the command: by the signal
    # (Python's KeyboardInterrupt would print a traceback). A caller's SIG_IGN stays.
    if _signal.getsignal(_SIGINT) is _signal.default_int_handler:
        _signal.signal(_SIGINT, _signal.SIG_DFL)
    path = default_socket()
    why = _private(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        if why is None:
            sock.connect(path)
            pid, uid, _ = (int.from_bytes(b, "little") for b in _split_ucred(
                sock.getsockopt(_socket.SOL_SOCKET, _SO_PEERCRED, 12)))
            if uid != os.getuid():
                why = f"{path} is served by uid {uid}"
            elif sandboxed(pid, _peer_pidfd(sock)):
                # A guest that may write the socket's directory can bind its own
                # socket there: it would be handed this command, unsupervised.
                why = f"{path} is served by a sandboxed process (pid {pid})"
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why is not None:
        sock.close()
        _say(f"no warm supervisor at {path} ({why}): starting cold (start one with "
             "'synthfs warm')")
        return COLD
    try:
        return _handshake(sock, argv)
    finally:
        sock.close()


def _peer_pidfd(sock: _socket.socket) -> int | None:
    try:
        return sock.getsockopt(_socket.SOL_SOCKET, _SO_PEERPIDFD)
    except OSError:  # a kernel before 6.5
        return None


def sandboxed(pid: int, pidfd: int | None = None) -> bool:
    """Whether ``pid`` is traced (every guest of a run is, under both engines), or cannot
    be told: a guest on either side of the warm socket gets nothing. ``pidfd`` (closed
    here) pins the pid: a process gone since (its pid maybe reused) counts as a guest."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            tracer = next((line for line in f if line.startswith(b"TracerPid:")), b"")
        traced = int(tracer.split()[1]) != 0 if tracer else True
        if pidfd is not None:
            _signal.pidfd_send_signal(pidfd, 0)  # ESRCH: the peer is gone
    except (OSError, ValueError, IndexError):
        traced = True
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return traced


def _split_ucred(raw: bytes) -> tuple[bytes, bytes, bytes]:
    return raw[0:4], raw[4:8], raw[8:12]


def _strings(items: list[str]) -> bytes:
    return b"".join(os.fsencode(s) + b"\0" for s in items)


def _handshake(sock: _socket.socket, argv: list[str]) -> int:
    env = [f"{k}={v}" for k, v in os.environ.items()]
    body = VERSION + _strings([os.getcwd(), str(len(argv)), *argv, *env])
    stderr = 2
    try:
        os.fstat(2)
    except OSError:
        stderr = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    # A supervisor that never answers is said, not waited on for ever (a cold run's
    # own set-up gives up on an agent within 10 s).
    try:
        timeout = float(os.environ.get("SYNTHFS_WARM_TIMEOUT", "") or ANSWER_TIMEOUT)
    except ValueError:
        timeout = ANSWER_TIMEOUT
    sock.settimeout(timeout)
    try:
        sock.sendmsg([len(body).to_bytes(4, "little"), body],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, stderr.to_bytes(4, "little"))])
        # ctypes (~7 ms) loads while the supervisor sets the run up, not after.
        from synthfs.interposer.bpf import Program

        # Seized from here on (the answer comes from the supervisor that traces us).
        kind = _recv_exact(sock, 1)
        size = int.from_bytes(_recv_exact(sock, 4), "little")
        payload = _recv_exact(sock, size)
    except TimeoutError:
        _say(f"the warm supervisor did not answer in {timeout:g} s (is it stopped?)")
        return 125
    except (OSError, EOFError):
        _say("the warm supervisor went away before the command started")
        return 125
    if kind == b"C":
        return COLD
    if kind == b"E":  # it said why on our stderr
        return payload[0] if payload else 125
    if kind != b"G" or len(payload) < 5:
        _say("the warm supervisor answered nonsense")
        return 125
    listener = payload[0:1] == b"n"
    bpf_size = int.from_bytes(payload[1:5], "little")
    bpf = payload[5 : 5 + bpf_size]
    command = [os.fsdecode(a) for a in payload[5 + bpf_size :].split(b"\0")[:-1]]
    program = Program(bpf)
    # What the caller gave, as a launcher's child sets it (Python ignored these two).
    _signal.signal(_SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_SIGXFSZ, _signal.SIG_DFL)
    try:
        fd = program.load(listener)
        if fd >= 0:  # the notify engine: the supervisor takes the listener, then says go
            sock.sendall(fd.to_bytes(4, "little"))
            if _recv_exact(sock, 1) != b"g":
                return 125
            os.close(fd)
        sock.close()
        _execvp(command)
    except FileNotFoundError:
        _say(f"{command[0]}: command not found")
        return 127
    except PermissionError:
        _say(f"{command[0]}: permission denied")
        return 126
    except (OSError, EOFError) as exc:
        _say(f"cannot start {command[0]}: {exc}")
        return 127
    return 127


def _execvp(command: list[str]) -> None:
    """``os.execvp`` without its import of ``warnings`` (~8 ms): the first error that
    is not ENOENT or ENOTDIR wins, as in execvp(3)."""
    name = command[0]
    if "/" in name:
        os.execv(name, command)  # noqa: S606 - the guest: argv as given, no shell
    first: OSError | None = None
    for folder in os.environ.get("PATH", os.defpath).split(":"):
        try:
            os.execv(os.path.join(folder or ".", name), command)  # noqa: S606
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            first = first or exc
    raise first or FileNotFoundError(2, "command not found", name)


if __name__ == "__main__":  # pragma: no cover - for timing the client alone
    sys.exit(run(sys.argv[1:]))
