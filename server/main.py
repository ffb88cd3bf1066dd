"""``synthfs server``: serve a repository directory to agents over ZeroMQ.

Trusts: the command line (its operator), the bootstrap key file and the CURVE
secret key file (both must be private), the client public keys it is given, and
the repository directory. Trusts nothing that arrives on the socket (see
:mod:`server.service`).

    synthfs server --root DIR --listen ENDPOINT [--bootstrap-key FILE] [--state DIR]
                   [--curve-secret FILE --curve-clients DIR_OR_FILE]
    synthfs server --s3 URL --bucket B [--prefix P] [--s3-profile NAME] --listen ...

With ``--s3`` the repository is a bucket (under a key prefix) of an S3 store
(:mod:`server.backends.s3`); its credentials come from the standard AWS chain
(environment, ``~/.aws/credentials``, a profile) and stay in this process.

The served directory is the user's: the server keeps its staging area and
commit journal in ``--state DIR`` (outside the root, on the same mount), never
inside the root.

A ``tcp://`` endpoint that is not loopback needs CURVE (:mod:`protocol.curve`):
the session token and the paths must not cross a network in clear. There is
no unencrypted override; a private network is served through a loopback
endpoint and a tunnel, or with CURVE.

Prints ``synthfs server: serving ROOT on ENDPOINT`` on stderr once the socket
is bound (and writes ``ready`` to ``--ready-fd`` for launchers), then serves
until SIGTERM or SIGINT, or (``--lifeline-fd``) until every holder of a pipe's
write end has gone: the embedded launcher and its agent hold it, so the server
outlives an agent that finishes an upload after its launcher was killed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from synthfs.protocol.curve import remote_tcp

if TYPE_CHECKING:
    from synthfs.protocol.curve import CurveServer
    from synthfs.server.backends.base import Backend

__all__ = ["HELP", "check_endpoint", "configure", "main"]

log = logging.getLogger(__name__)

HELP = "serve a repository directory (or an S3 bucket) to agents"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the repository directory ROOT to synthfs agents over ZeroMQ. Agents "
        "register with an HMAC of the bootstrap key and get a session token; every "
        "other request must carry it. To serve agents on other machines, listen on "
        "tcp://ADDRESS:PORT with CURVE: make key pairs with 'synthfs keys', start the "
        "server with --curve-secret and --curve-clients, and the agents with "
        "--curve-secret and --server-key (the link is then encrypted and only the listed "
        "agents' keys get through)."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", metavar="DIR", help="the repository directory")
    source.add_argument(
        "--s3", metavar="URL", nargs="?", const="", default=None,
        help="serve an S3 bucket instead: the store's endpoint URL (http://HOST:PORT for "
        "SeaweedFS, MinIO, Ceph RGW...; give --s3 alone for AWS). Credentials come from the "
        "standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, "
        "--s3-profile) and never leave the server")
    parser.add_argument("--bucket", metavar="NAME", default=None,
                        help="with --s3: the bucket (it must exist)")
    parser.add_argument("--prefix", metavar="P", default="",
                        help="with --s3: serve the keys under P/ only (default: the whole bucket)")
    parser.add_argument("--s3-profile", metavar="NAME", default=None,
                        help="with --s3: the AWS configuration profile to take credentials "
                        "and region from")
    parser.add_argument(
        "--listen", required=True, metavar="ENDPOINT",
        help="ZeroMQ endpoint: ipc://PATH (socket created 0600), tcp://HOST:PORT on a "
        "loopback address (tcp://127.0.0.1:* picks a free port), or, with --curve-secret, "
        "any tcp://ADDRESS:PORT (tcp://*:PORT: every interface)",
    )
    parser.add_argument(
        "--bootstrap-key", metavar="FILE", default=None,
        help="the bootstrap key file, created (32 random bytes as hex, mode 0600) when it "
        "does not exist; refused if group or others can access it "
        "(default: $XDG_CONFIG_HOME/synthfs/bootstrap.key, ~/.config when unset)",
    )
    parser.add_argument(
        "--state", metavar="DIR", default=None,
        help="the server's state directory: staged uploads and the commit journal (made "
        "0700). Must be outside ROOT and on the same file system and mount as ROOT, so that "
        "an upload is renamed into place atomically; the server refuses to start otherwise. "
        "Unused when ROOT is on a read-only mount (served for reading, writes are EROFS). "
        "Default: $XDG_STATE_HOME/synthfs/server/REPO_ID (~/.local/state when unset)",
    )
    parser.add_argument("--token-ttl", type=float, default=3600.0, metavar="SECONDS",
                        help="lifetime of a session token (default: 3600)")
    parser.add_argument("--publish", metavar="ENDPOINT", default=None,
                        help="also announce invalidations on a PUB socket: ['inval', path, "
                        "new version or '' if gone, instance, seq, parent?] after each "
                        "mutation, and ['beat', instance, seq] every 0.5 s, each sealed with a "
                        "key only registered agents get (agents hold callback promises while "
                        "these arrive unbroken)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads serving bulk data (reads, uploads); one agent uses at "
                        "most half of them. Default 8, with --s3 12 (an object store's "
                        "requests wait on the network: six reads of one file in flight)")
    parser.add_argument(
        "--curve-secret", metavar="FILE", default=None,
        help="the server's CURVE secret key file (NAME.key_secret from 'synthfs keys', mode "
        "0600): --listen and --publish then encrypt and authenticate every connection; "
        "agents need the matching NAME.key as their --server-key. Required for a tcp "
        "endpoint that is not loopback",
    )
    parser.add_argument(
        "--curve-clients", metavar="DIR_OR_FILE", default=None,
        help="the agents' CURVE public keys allowed to connect: one NAME.key file, or a "
        "directory whose *.key files are read at start-up; any other key is refused during "
        "the handshake (required with --curve-secret)",
    )
    parser.add_argument("--ready-fd", type=int, metavar="N", default=None,
                        help="write 'ready' to fd N and close it once the socket is bound")
    parser.add_argument("--lifeline-fd", type=int, metavar="N", default=None,
                        help="stop when fd N (a pipe's read end) reads end-of-file: when "
                        "every process holding its write end has gone")


def _watch_lifeline(fd: int, stop_w: int) -> None:
    """Wait for end-of-file on ``fd``, then end the serving loop (as a signal would)."""
    try:
        while os.read(fd, 64):
            pass
    except OSError as exc:
        log.warning("--lifeline-fd %d: %s", fd, exc.strerror)
        return
    log.info("lifeline: every holder has gone")
    with contextlib.suppress(OSError):  # already stopping: the pipe is full
        os.write(stop_w, b"\0")


def check_endpoint(endpoint: str, curve: bool) -> None:
    """Refuse what the server must not bind: other transports, non-loopback tcp without CURVE."""
    if endpoint.startswith("ipc://"):
        if len(endpoint) <= len("ipc://"):
            raise ValueError("empty ipc:// path")
        return
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"{endpoint!r}: only ipc:// and tcp:// endpoints are supported")
    hostport = endpoint[len("tcp://"):]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"{endpoint!r}: expected tcp://HOST:PORT")
    if remote_tcp(endpoint) and not curve:
        raise ValueError(
            f"{endpoint!r} is not a loopback address: serving other machines needs CURVE "
            "(--curve-secret and --curve-clients; make keys with 'synthfs keys'), so that "
            "tokens and paths do not cross the network in clear"
        )


def _fail(msg: str, code: int = 2) -> int:
    print(f"synthfs server: error: {msg}", file=sys.stderr)
    return code


def _load_curve(args: argparse.Namespace) -> CurveServer | None:
    """The CURVE settings, or None; ValueError/OSError with a message for the operator."""
    from synthfs.protocol.curve import CurveServer, load_allowed, load_keypair

    if args.curve_secret is None and args.curve_clients is None:
        return None
    if args.curve_secret is None or args.curve_clients is None:
        raise ValueError("--curve-secret and --curve-clients go together")
    return CurveServer(keys=load_keypair(args.curve_secret),
                       allowed=load_allowed(args.curve_clients))


def _s3_backend(args: argparse.Namespace) -> tuple[Backend, str, str]:
    """The S3 backend the flags name, how to show it (no credentials in either), and its
    state directory."""
    from botocore.exceptions import BotoCoreError

    from synthfs.server.backends.s3 import S3Backend, repo_id_for
    from synthfs.server.statedir import default_state_dir

    endpoint = args.s3 or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"{endpoint!r}: expected http://HOST:PORT or https://HOST")
    state = args.state
    if state is None:  # the default directory's name comes from the repository's id
        rid = repo_id_for(endpoint or "", args.bucket, args.prefix.strip("/") + "/"
                          if args.prefix.strip("/") else "")
        state = os.path.join(os.path.dirname(default_state_dir("/")), "s3-" + rid)
    try:
        backend = S3Backend(endpoint, args.bucket, args.prefix, state=state,
                            profile=args.s3_profile)
    except BotoCoreError as exc:  # e.g. ProfileNotFound
        raise ValueError(str(exc)) from None
    shown = f"s3://{args.bucket}/{backend.prefix} at {endpoint or 'AWS'}"
    return backend, shown, backend.state


def main(args: argparse.Namespace) -> int:
    import zmq

    from synthfs.linux import reuse_freed_memory
    from synthfs.server.auth import Authority, default_key_path, load_or_create_key
    from synthfs.server.backends.local import LocalBackend, StateDirError
    from synthfs.server.service import Server

    reuse_freed_memory()  # every Read and upload chunk needs 4 MiB buffers again
    if args.s3 is None and (args.bucket or args.prefix or args.s3_profile):
        return _fail("--bucket, --prefix and --s3-profile go with --s3")
    if args.s3 is not None and not args.bucket:
        return _fail("--s3 needs --bucket NAME")
    root = os.path.abspath(args.root) if args.root is not None else ""
    if args.root is not None and not os.path.isdir(root):
        return _fail(f"--root {args.root}: not a directory")
    if args.token_ttl <= 0:
        return _fail("--token-ttl must be positive")
    if args.workers is None:
        args.workers = 12 if args.s3 is not None else 8
    if args.workers < 1:
        return _fail("--workers must be at least 1")
    try:
        curve = _load_curve(args)
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror))
    except ValueError as exc:
        return _fail(str(exc))
    try:
        check_endpoint(args.listen, curve is not None)
        if args.publish:
            check_endpoint(args.publish, curve is not None)
            if args.publish == args.listen and args.listen.startswith("ipc://"):
                # the second bind would take the socket file over (tcp: EADDRINUSE)
                raise ValueError(f"--publish {args.publish}: the same endpoint as --listen "
                                 "(give the invalidations an endpoint of their own)")
    except ValueError as exc:
        return _fail(str(exc))
    key_path = args.bootstrap_key or default_key_path()
    try:
        key, created = load_or_create_key(key_path)
    except OSError as exc:
        if exc.filename:  # os.open's error: name the file (a refused key's message does)
            return _fail(f"bootstrap key {key_path}: {exc.strerror}")
        return _fail(str(exc.strerror or exc))
    if created:
        print(f"synthfs server: created bootstrap key {key_path} (mode 0600)", file=sys.stderr)
    backend: Backend
    state: str | None
    if args.s3 is not None:
        try:
            backend, served, state = _s3_backend(args)
        except ImportError:
            return _fail("--s3 needs boto3 (pip install 'synthfs[s3]')")
        except OSError as exc:
            return _fail(str(exc.strerror or exc))
        except ValueError as exc:  # a malformed endpoint URL, a profile that does not exist
            return _fail(f"--s3: {exc}")
    else:
        try:
            backend = local = LocalBackend(root, state=args.state)
        except StateDirError as exc:
            return _fail(str(exc.strerror))
        except OSError as exc:
            return _fail(f"cannot serve {root}: {exc.strerror or exc}")
        served, state = root, local.state
    if isinstance(backend, LocalBackend) and backend.read_only:
        print(f"synthfs server: {root} is on a read-only mount: serving it for reading "
              "(writes are EROFS)", file=sys.stderr)
    from synthfs.protocol.trusted import Kind, refused, socket_path

    trusted = refused([
        (Kind.DATA_ROOT, root or None),
        (Kind.STATE, state),
        (Kind.BOOTSTRAP_KEY, key_path),
        (Kind.CURVE_SECRET, args.curve_secret),
        (Kind.SERVER_SOCKET, socket_path(args.listen)),
        (Kind.SERVER_SOCKET, socket_path(args.publish or "")),
    ])
    authority = Authority(key, backend.repo_id, args.token_ttl, trusted)
    del key
    server = Server(backend, authority, args.listen, workers=args.workers, publish=args.publish,
                    curve=curve)
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            bound = server.bind()
        except zmq.ZMQError as exc:
            return _fail(f"cannot listen on {args.listen}: {exc}", 1)
        signal.set_wakeup_fd(stop_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)  # the wakeup fd ends the loop
        if args.lifeline_fd is not None:
            # its own copy of stop_w: the thread may outlive this function's close of it
            threading.Thread(target=_watch_lifeline, args=(args.lifeline_fd, os.dup(stop_w)),
                             name="lifeline", daemon=True).start()
        if args.publish:
            print(f"synthfs server: invalidations on {server.bound_publish}", file=sys.stderr)
        if curve is not None:
            print(f"synthfs server: CURVE on (server key {curve.keys.public.decode()}, "
                  f"{len(curve.allowed)} client keys)", file=sys.stderr)
        print(f"synthfs server: serving {served} on {bound}", file=sys.stderr, flush=True)
        if args.ready_fd is not None:
            try:
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
            except OSError as exc:
                log.warning("--ready-fd %d: %s", args.ready_fd, exc.strerror)
        server.serve(stop_fd=stop_r)
        return 0
    finally:
        signal.set_wakeup_fd(-1)
        server.close()
        backend.close()
        os.close(stop_r)
        os.close(stop_w)
