"""``synthfs agent``: the trusted agent process (its CLI and its one I/O loop).

Trusts: the bootstrap key file or fd it is given (it must be private), its
CURVE secret key file (private too), the server it registers with (over a
``tcp://`` link that leaves the machine: the one holding ``--server-key``'s
secret, :mod:`protocol.curve`), and the interposer, the only process able to reach
its private ``ipc://`` socket (mode 0600, in a 0700 directory). It makes itself
non-dumpable first thing, so guests (same uid) cannot ptrace it or read its
memory; the key and the session token live in its memory only, never in argv,
the environment, a log line or a file it writes.

Start-up: read the key, bind the socket, with CURVE complete one handshake
(a clear error if the server refuses this agent's key or never completes
one), register with the server (a clear error if the server does not answer
within ``--timeout`` seconds), open the
cache, then print a ready line on stderr and write ``b"ready\\n"`` to
``--ready-fd`` (and close it). One loop then serves the interposer, one
request at a time, and (with ``--subscribe``) the server's invalidations
beside it (:mod:`agent.callbacks`); every exception inside a handler becomes an ``Error``
reply (unexpected ones are logged with their traceback and answered EIO; a
server that did not answer is ``SERVER_UNREACHABLE``), so the agent never
dies on input. SIGTERM/SIGINT stop it cleanly (index saved,
socket file removed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import zmq

from synthfs.agent.cache import DEFAULT_CACHE_SIZE, default_cache_dir, parse_size
from synthfs.agent.callbacks import MAX_AGE, Promises, Subscription
from synthfs.agent.service import DEFAULT_ATTR_TTL, AgentService
from synthfs.agent.upstream import Upstream
from synthfs.agent.writeback import DEFAULT_UPLOAD_DELAY
from synthfs.linux import reuse_freed_memory
from synthfs.protocol.bootstrap import check_key_fd
from synthfs.protocol.client import DEFAULT_TIMEOUT, SERVER_UNREACHABLE, Unreachable
from synthfs.protocol.codec import MAX_FRAME, DecodeError, decode, encode, error_from_exception
from synthfs.protocol.curve import client_sockopts, handshake, load_keypair, load_public, remote_tcp
from synthfs.protocol.endpoints import check_endpoint
from synthfs.protocol.leases import BEAT_INTERVAL, LeaseBoard
from synthfs.protocol.messages import Error, Progress
from synthfs.protocol.ratelimit import RateLimitedLog
from synthfs.protocol.trusted import Kind, refused, socket_path

__all__ = ["HELP", "configure", "main", "make_undumpable", "read_key_fd", "read_key_file"]

HELP = "run the trusted agent (holds the token, owns the cache)"
log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_MAX_KEY = 4096


def make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): no ptrace, no /proc/PID/mem, no core dump."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(e)}")


def read_key_file(path: str) -> bytes:
    """The bootstrap key in ``path``; refuse a file others can read or write."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        check_key_fd(fd, path)
        return _read_key(fd)
    finally:
        os.close(fd)


def read_key_fd(fd: int) -> bytes:
    """The bootstrap key from an inherited fd (read to EOF, then closed)."""
    try:
        return _read_key(fd)
    finally:
        os.close(fd)


def _read_key(fd: int) -> bytes:
    chunks = []
    total = 0
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
        total += len(chunk)
        if total > _MAX_KEY:
            raise OSError(errno.EINVAL, "bootstrap key is too long")
    key = b"".join(chunks).strip()
    if not key:
        raise OSError(errno.EINVAL, "bootstrap key is empty")
    return key


def _socket_path(endpoint: str) -> str:
    if not endpoint.startswith("ipc://"):
        raise ValueError(f"--listen must be an ipc:// endpoint, not {endpoint!r}")
    path = os.path.abspath(endpoint[len("ipc://"):])
    if len(path.encode()) > 107:
        raise ValueError(f"socket path {path} is longer than 107 bytes")
    return path


def _private_dir(path: str) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise PermissionError(
            errno.EPERM,
            f"the socket's directory {d} must be owned by this user with mode 0700 "
            f"(it has {stat.S_IMODE(st.st_mode):04o})",
        )


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="EP[,EP...]",
                        help="the server's endpoint; several, comma-separated, serving one "
                        "repository: requests are spread over them, and go to the others "
                        "when one is lost")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--bootstrap-key", metavar="FILE", help="bootstrap key file (mode 0600)")
    key.add_argument("--bootstrap-fd", metavar="N", type=int, help="read the key from fd N")
    parser.add_argument("--listen", required=True, metavar="ipc://PATH",
                        help="private socket for the interposer (its directory must be 0700)")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="content cache (default: $XDG_CACHE_HOME/synthfs or ~/.cache/synthfs)")
    parser.add_argument("--cache-size", metavar="SIZE", type=_size_arg, default=DEFAULT_CACHE_SIZE,
                        help="bound of the cache in bytes, or e.g. 512M, 10G: clean copies no "
                        "guest holds for writing are evicted, least recently used first "
                        "(default 1G)")
    parser.add_argument("--attr-ttl", metavar="S", type=float, default=DEFAULT_ATTR_TTL,
                        help="seconds a Stat/List answer serves later Stats (default 1, max 1)")
    parser.add_argument("--subscribe", metavar="EP[,EP...]", default=None,
                        help="the server's --publish endpoint (with several servers, each "
                        "one's, in the order of --server): hold callback promises, so an "
                        "Open or Stat of an unchanged cached object needs no round trip")
    parser.add_argument("--promise-max-age", metavar="S", type=float, default=MAX_AGE,
                        help="seconds a callback promise lasts at most: the bound on how long "
                        "a change made behind the servers' backs (directly in the repository) "
                        f"can stay unseen by an open (default {MAX_AGE:g})")
    parser.add_argument("--curve-secret", metavar="FILE", default=None,
                        help="this agent's CURVE secret key file (NAME.key_secret from "
                        "'synthfs keys', mode 0600; its NAME.key goes to the server's "
                        "--curve-clients): the link to --server and --subscribe is encrypted "
                        "and authenticated. Required when the server is not on a loopback "
                        "address")
    parser.add_argument("--server-key", metavar="FILE", default=None,
                        help="the server's CURVE public key file (its NAME.key); required "
                        "with --curve-secret")
    parser.add_argument("--timeout", metavar="S", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds before an unanswered server request fails (default 5)")
    parser.add_argument("--write-through", dest="write_through", action="store_true",
                        default=True,
                        help="a close waits until the server has the file (the default)")
    parser.add_argument("--write-back", dest="write_through", action="store_false",
                        help="a close is durable in the agent's journal and the file reaches "
                        "the server within --upload-delay; fsync and sync still wait for it")
    parser.add_argument("--upload-delay", metavar="S", type=float, default=DEFAULT_UPLOAD_DELAY,
                        help="write-back: seconds within which a closed file reaches the server "
                        "while it answers (default 1)")
    parser.add_argument("--no-direct", dest="direct", action="store_false",
                        help="fetch every file through the server (by default a large file on "
                        "an S3 server is read from the store itself, on a URL the server signs)")
    parser.add_argument("--refuse", metavar="PATH", action="append", default=[],
                        help="another host path to list in Welcome.refused_paths (repeatable)")
    parser.add_argument("--ready-fd", metavar="N", type=int, default=None,
                        help="write 'ready' to fd N and close it once serving")


def _why(exc: BaseException) -> str:
    """An error for a human: the OSError's message (with the file name), not its repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _curve_sockopts(args: argparse.Namespace) -> dict[int, int | bytes]:
    """The CURVE options for the upstream sockets ({} without CURVE); refuse clear remote links."""
    if args.curve_secret is None and args.server_key is None:
        for flag, ep in [*(("--server", e) for e in args.servers),
                         *(("--subscribe", e) for e in args.subscribes)]:
            if ep and remote_tcp(ep):
                raise ValueError(f"{flag} {ep} is not a loopback address: the link needs CURVE "
                                 "(--curve-secret and --server-key), or the token would cross "
                                 "the network in clear")
        return {}
    if args.curve_secret is None or args.server_key is None:
        raise ValueError("--curve-secret and --server-key go together")
    return client_sockopts(load_keypair(args.curve_secret), load_public(args.server_key))


class _Stop(Exception):
    pass


def main(args: argparse.Namespace) -> int:
    make_undumpable()
    reuse_freed_memory()  # every fetched and uploaded chunk needs 4 MiB buffers again
    flag = _StopFlag()
    flag.install()
    try:
        return _main(args, flag)
    except _Stop:
        log.info("agent: stopped")
        return 0


def _main(args: argparse.Namespace, flag: _StopFlag) -> int:
    try:
        args.servers = _endpoints("--server", args.server)
        args.subscribes = _endpoints("--subscribe", args.subscribe) if args.subscribe else []
        if args.subscribes and len(args.subscribes) != len(args.servers):
            raise ValueError(f"--subscribe names {len(args.subscribes)} endpoints and --server "
                             f"{len(args.servers)}: give each server's --publish endpoint, "
                             "in the same order")
        if args.promise_max_age <= 0:
            raise ValueError("--promise-max-age must be positive")
        try:
            key = read_key_fd(args.bootstrap_fd) if args.bootstrap_fd is not None \
                else read_key_file(args.bootstrap_key)
        except OSError as exc:
            if args.bootstrap_fd is None or exc.filename:
                raise
            raise OSError(exc.errno, f"--bootstrap-fd {args.bootstrap_fd}: {exc.strerror}") \
                from None
        sock_path = _socket_path(args.listen)
        _private_dir(sock_path)
    except (OSError, ValueError) as exc:
        print(f"synthfs agent: {_why(exc)}", file=sys.stderr)
        return 2
    if not 0 <= args.attr_ttl <= 1:
        print("synthfs agent: --attr-ttl must be between 0 and 1 s", file=sys.stderr)
        return 2
    if args.cache_size <= 0 or args.timeout <= 0 or not 0 < args.upload_delay <= 86400:
        print("synthfs agent: --cache-size, --timeout and --upload-delay must be positive "
              "(--upload-delay at most 86400 s)", file=sys.stderr)
        return 2
    try:
        sockopts = _curve_sockopts(args)
    except (OSError, ValueError) as exc:
        print(f"synthfs agent: {_why(exc)}", file=sys.stderr)
        return 2
    cache_root = os.path.abspath(args.cache or default_cache_dir())
    # The agent's part of the one trusted list (protocol.trusted): the server's
    # sockets too, which a guest able to replace them would serve in its place.
    trusted: list[tuple[Kind, str | None]] = [
        (Kind.CACHE, cache_root),
        (Kind.AGENT_SOCKET, sock_path),
        (Kind.BOOTSTRAP_KEY, args.bootstrap_key),
        (Kind.CURVE_SECRET, args.curve_secret),
        *((Kind.SERVER_SOCKET, socket_path(ep)) for ep in args.servers),
        *((Kind.SERVER_SOCKET, socket_path(ep)) for ep in args.subscribes),
        *((Kind.WORKDIR, p) for p in args.refuse),
    ]

    ctx: zmq.Context[Any] = zmq.Context.instance()  # one context, one I/O thread
    upstream = Upstream(args.servers, key, timeout=args.timeout, sockopts=sockopts)
    del key
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME + 4096)  # larger: dropped with the connection
    service: AgentService | None = None
    subs: list[Subscription] = []
    board: LeaseBoard | None = None
    try:
        old_umask = os.umask(0o077)
        try:
            if os.path.exists(sock_path):
                os.unlink(sock_path)  # a stale socket from a killed agent
            router.bind(f"ipc://{sock_path}")
        finally:
            os.umask(old_umask)
        os.chmod(sock_path, 0o600)
        if sockopts:
            for ep in args.servers:
                try:
                    handshake(ctx, ep, sockopts, args.timeout)
                except OSError as exc:  # refused key, or no handshake at all
                    if len(args.servers) == 1 or exc.errno != errno.ETIMEDOUT:
                        print(f"synthfs agent: {_why(exc)}", file=sys.stderr)
                        return 1
                    log.warning("%s (the agent starts with the other servers)", _why(exc))
        try:
            upstream.register()
        except Unreachable:
            print(f"synthfs agent: {'server at' if len(args.servers) == 1 else 'no server of'} "
                  f"{args.server} did not answer within "
                  f"{args.timeout:g} s", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"synthfs agent: registration with {args.server} failed: {_why(exc)}",
                  file=sys.stderr)
            return 1
        # A server on this host: its root, state, keys and sockets are trusted here too.
        trusted.extend((Kind.SERVER_OWN, p) for p in upstream.local_server_paths())
        promises = Promises(channels=len(args.subscribes) or 1, max_age=args.promise_max_age)
        for i, ep in enumerate(args.subscribes):
            server = upstream.servers[i]
            subs.append(Subscription(ctx, ep, promises, sockopts,
                                     key=lambda s=server: s.publish_key,  # type: ignore[misc]
                                     channel=i, on_foreign=server.stale))
        if subs:
            board = LeaseBoard.bind(ctx, sock_path)  # leases rest on promises
            if board is not None:
                trusted.append((Kind.LEASE_SOCKET, board.path))
        try:
            service = AgentService(upstream, cache_root, cache_size=args.cache_size,
                                   attr_ttl=args.attr_ttl, refused_paths=refused(trusted),
                                   promises=promises,
                                   refresh=_drainer(subs),
                                   leases=board,
                                   leases_endpoint=board.endpoint if board else "",
                                   write_through=args.write_through,
                                   upload_delay=args.upload_delay)
        except OSError as exc:
            print(f"synthfs agent: cannot use the cache at {cache_root}: {_why(exc)}",
                  file=sys.stderr)
            return 1
        if not args.direct:
            service.direct_min = None
        def learnt_paths() -> None:
            # A server registered late (down at start-up): its paths are refused from now
            # on (a supervisor that said Hello before does not learn them: SECURITY.md).
            assert service is not None
            service.refused_paths = refused(
                [*(t for t in trusted if t[0] != Kind.SERVER_OWN),
                 *((Kind.SERVER_OWN, p) for p in upstream.local_server_paths())])
        upstream.on_new_paths = learnt_paths

        def pass_note(note: Progress) -> None:
            # A server's note on a long mutation: the guest's wait on us starts again too.
            if service is not None and service.note is not None:
                service.note(note)
        upstream.on_note = pass_note
        mode = "write-through" if args.write_through else \
            f"write-back within {args.upload_delay:g} s"
        print(f"synthfs agent: ready on ipc://{sock_path} (server {args.server}, "
              f"repo {upstream.repo_id}, cache {service.cache.dir}, {mode})", file=sys.stderr,
              flush=True)
        if args.ready_fd is not None:
            try:
                os.write(args.ready_fd, b"ready\n")
            except OSError as exc:  # serve all the same (as the server does)
                log.warning("--ready-fd %d: %s", args.ready_fd, exc.strerror)
            with contextlib.suppress(OSError):
                os.close(args.ready_fd)
        _serve(router, service, flag, subs)
        return 0
    finally:
        if service is not None:
            service.close()
        for sub in subs:
            sub.close()
        if board is not None:
            board.close()
        upstream.close()
        router.close(linger=0)
        if os.path.exists(sock_path):
            with contextlib.suppress(OSError):
                os.unlink(sock_path)


class _StopFlag:
    """SIGTERM/SIGINT: stop at once when idle, else after the request in hand."""

    def __init__(self) -> None:
        self.idle = True
        self.stop = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # A lease break's notice: write-back's probe for writers (agent/writeback.py) holds
        # a read lease for two syscalls, and an open for writing then raises SIGIO here.
        signal.signal(signal.SIGIO, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        if self.idle:
            raise _Stop


def _endpoints(flag: str, value: str) -> list[str]:
    """The endpoints of a comma-separated ``value``, each checked; ValueError otherwise."""
    eps = [e.strip() for e in value.split(",")]
    if not all(eps) or len(set(eps)) != len(eps):
        raise ValueError(f"{flag} {value}: expected EP or EP1,EP2,... (distinct, none empty)")
    for ep in eps:
        check_endpoint(flag, ep)
    return eps


def _drainer(subs: list[Subscription]) -> Callable[[], None] | None:
    """What processes every subscription's pending publications (None: none)."""
    if not subs:
        return None
    if len(subs) == 1:
        return subs[0].drain

    def drain() -> None:
        for sub in subs:
            sub.drain()
    return drain


def _serve(router: zmq.Socket[Any], service: AgentService, flag: _StopFlag,
           subs: list[Subscription] | None = None) -> None:
    housekeeping = time.monotonic() + 1.0
    subs = subs or []
    drain = _drainer(subs)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    if not subs:
        router.setsockopt(zmq.RCVTIMEO, 1000)  # a blocking receive: cheaper than poll + recv
    for sub in subs:
        poller.register(sub.socket, zmq.POLLIN)
        poller.register(sub.monitor, zmq.POLLIN)
    board = service.leases
    if board is not None and board.socket is not None:
        poller.register(board.socket, zmq.POLLIN)
    while not flag.stop:
        if time.monotonic() > housekeeping:
            service.idle()  # at least once a second, busy or not
            service.upstream.housekeeping()
            housekeeping = time.monotonic() + 1.0
        # Write-back uploads: when due and nothing waits (or when they are late).
        due = service.writeback_due()
        if due is not None and (due == 0.0 and not router.poll(0)):
            flag.idle = False
            service.background()
            flag.idle = True
            continue
        if drain is not None or due is not None:
            wait_ms = 1000 if board is None else int(BEAT_INTERVAL * 1000)
            if due is not None:
                wait_ms = min(wait_ms, max(1, int(due * 1000)))
            events = dict(poller.poll(wait_ms))
            if drain is not None and any(s.socket in events or s.monitor in events
                                         for s in subs):
                drain()  # before the request: what arrived first is known first
            if board is not None:
                if board.socket in events:
                    board.subscribed()
                board.beat()  # when due
            if router not in events:
                continue
        try:
            parts = router.recv_multipart(zmq.NOBLOCK if subs or due is not None else 0)
        except zmq.Again:
            continue
        flag.idle = False
        reply = _answer(service, parts[-1], _sender(router, parts[:-1]))
        if reply is not None:
            parts[-1] = reply
            router.send_multipart(parts)
        if service.writeback_urgent():
            service.background()
        flag.idle = True


#: At most 20 bad frames logged per 10 s, so a flood of them cannot fill the disk.
_bad_frames = RateLimitedLog(log, "bad frames")


def _sender(router: zmq.Socket[Any], route: list[Any]) -> Callable[[bytes], None]:
    """Send a frame to the peer of ``route`` (a note before the reply to its request)."""
    def send(frame: bytes) -> None:
        router.send_multipart([*route, frame])
    return send


def _answer(service: AgentService, frame: Any,
            send: Callable[[bytes], None] | None = None) -> bytes | None:
    """The encoded reply to one request; ``send`` carries its Progress notes meanwhile."""
    try:
        env = decode(frame, request=True)
    except DecodeError as exc:
        _bad_frames.warning("agent: dropped a bad frame: %s", exc)
        return None
    log.debug("agent: <- %d %r", env.request_id, env.msg)
    if send is not None:
        service.note = lambda msg: send(encode(msg, env.request_id))
    try:
        reply = service.handle(env.msg)
    except Unreachable as exc:  # the server, not the request: say so (Upstream logged it)
        why = f"the server at {exc.endpoint} did not answer within {exc.seconds:.3g} s"
        reply = Error(errno=SERVER_UNREACHABLE, message=why[:1024])
    except OSError as exc:
        reply = error_from_exception(exc)
    except Exception as exc:
        log.exception("agent: internal error handling %s", env.msg.kind)
        reply = error_from_exception(exc)
    finally:
        service.note = None
    try:
        return encode(reply, env.request_id)
    except Exception as exc:
        log.exception("agent: could not encode the reply to %s", env.msg.kind)
        return encode(error_from_exception(exc), env.request_id)
