"""``synthfs keys``: make a CURVE key pair for a server or an agent (:mod:`protocol.curve`).

    synthfs keys PREFIX      # writes PREFIX.key (public) and PREFIX.key_secret (0600)

Neither file is ever overwritten. The public file goes to the other side (an
agent's to the server's ``--curve-clients`` directory, the server's to each
agent's ``--server-key``); the secret file stays on the machine it was made for.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["HELP", "configure", "main"]

HELP = "make a CURVE key pair (PREFIX.key public, PREFIX.key_secret private)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Make a CURVE key pair for tcp:// links between agents and servers: PREFIX.key holds "
        "the public key (give it to the other side), PREFIX.key_secret both keys (mode 0600, "
        "stays here). Existing files are never overwritten. The files are ZeroMQ "
        "certificates, as zmq.auth.create_certificates writes them."
    )
    parser.add_argument("prefix", metavar="PREFIX",
                        help="path and name of the pair, e.g. /etc/synthfs/server or ./agent-a")


def main(args: argparse.Namespace) -> int:
    from synthfs.protocol.curve import load_keypair, write_keypair

    directory = os.path.dirname(os.path.abspath(args.prefix))
    if not os.path.isdir(directory):
        print(f"synthfs keys: error: {directory} is not a directory", file=sys.stderr)
        return 2
    try:
        public, secret = write_keypair(args.prefix)
    except OSError as exc:
        why = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        print(f"synthfs keys: error: {why}", file=sys.stderr)
        return 1
    key = load_keypair(secret).public.decode()
    print(f"synthfs keys: public key {key}\n  {public} (public: give it to the other side)\n"
          f"  {secret} (secret, mode 0600: keep it here)", file=sys.stderr)
    return 0
