"""``synthfs agent sync``: wait until a running agent's server has every closed file.

Prints one status line: what this call uploaded and what is still queued. With
``--status`` it waits for nothing: the changed copies are queued (as a
process exit queues them) and the queue is shown. Exit status 0 when nothing
is left queued (``--status``: always 0 once the agent answered), 1 when the
agent could not upload everything (its server did not answer), 2 for a bad
endpoint or no agent.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from synthfs.protocol.client import SERVER_UNREACHABLE, Client
from synthfs.protocol.endpoints import check_endpoint
from synthfs.protocol.messages import Sync, Synced

__all__ = ["HELP", "configure", "main"]

HELP = "wait until a running agent's server has every file closed on /data"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", metavar="ENDPOINT", required=True,
                        help="the agent's socket (ipc://PATH), as given to 'synthfs run --agent'")
    parser.add_argument("--status", action="store_true",
                        help="show what is queued; do not wait for the server")
    parser.add_argument("--timeout", metavar="S", type=float, default=3600.0,
                        help="seconds to wait for the agent (default 3600)")


def status_line(reply: Synced) -> str:
    line = f"uploaded {reply.uploaded}, queued {reply.queued}"
    if reply.queued:
        line += f" ({reply.queued_bytes} bytes, oldest {reply.oldest_ms / 1000:.1f} s ago)"
    return line


def main(args: argparse.Namespace) -> int:
    try:
        check_endpoint("--agent", args.agent, tcp=False)
    except ValueError as exc:
        print(f"synthfs agent sync: {exc}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("synthfs agent sync: --timeout must be positive", file=sys.stderr)
        return 2
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:  # nobody listening: say so now, not after the whole timeout
        probe.connect(args.agent[len("ipc://"):])
    except OSError as exc:
        why = "no such socket" if exc.errno == errno.ENOENT else "no agent listens on it"
        print(f"synthfs agent sync: {args.agent}: {why}", file=sys.stderr)
        return 2
    finally:
        probe.close()
    client = Client(args.agent, timeout=args.timeout, retries=0)
    try:
        reply = client.call(Sync(wait=not args.status))
    except OSError as exc:
        why = "its server did not answer" if exc.errno == SERVER_UNREACHABLE \
            else (exc.strerror or str(exc))
        print(f"synthfs agent sync: {args.agent}: {why}", file=sys.stderr)
        return 1 if exc.errno == SERVER_UNREACHABLE else 2
    finally:
        client.close()
    if not isinstance(reply, Synced):
        print(f"synthfs agent sync: the agent answered {reply.kind}", file=sys.stderr)
        return 2
    print(f"synthfs agent sync: {status_line(reply)}")
    return 0 if args.status or reply.queued == 0 else 1
