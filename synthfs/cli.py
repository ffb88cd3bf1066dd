"""The ``synthfs`` command: one entry point, one module per subcommand.

Each subcommand lives in its own module exposing ``HELP`` (one line),
``configure(parser)`` and ``main(args) -> int``. Only the chosen module is
imported, so ``synthfs run`` does not pay for the server's or the benchmark's
imports at start-up. A module that closes everything it opened before its
``main`` returns says ``FAST_EXIT = True``: run as the program (``main()``
with no argv), the process then ends at once with ``os._exit``, skipping the
interpreter's teardown of every module and object (~30 ms quiet, over 100 ms
on a loaded machine, paid at the end of every ``synthfs run``).
"""

from __future__ import annotations

import os
import sys

from synthfs import __version__

TYPE_CHECKING = False  # not typing's: its import (re, collections...) would double a warm start
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("synthfs.interposer.run", "run a command with the synthetic tree at /data"),
    "warm": ("synthfs.interposer.warm", "serve warm starts: 'synthfs run --warm --agent EP' "
             "then starts in a few ms"),
    "syscalls": ("synthfs.interposer.syscalls_cli",
                 "print the syscall table (support level, handler)"),
    "server": ("synthfs.server.main", "serve a repository directory to agents"),
    "agent": ("synthfs.agent.main", "run the trusted agent (holds the token, owns the cache)"),
    "cache": ("synthfs.agent.cache_cli", "list the agent's content cache, or clear its clean "
              "copies"),
    "keys": ("synthfs.protocol.keys_cli", "make a CURVE key pair for tcp:// agents and servers"),
    "policy": ("synthfs.policy.cli", "check or explain a policy file"),
    "learn": ("synthfs.policy.learn_cli",
              "run a command with everything allowed and recorded; write the policy it needs"),
    "audit": ("synthfs.policy.audit_cli", "summarise an audit log (synthfs run --audit FILE)"),
    "bench": ("synthfs.benchmarks.cli", "benchmark synthfs against native and peer tools"),
}


def _top_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="synthfs",
        description="Unmodified programs see a data repository as /data, without a kernel mount.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument("--version", action="version", version=f"synthfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    program = argv is None  # the console script or ``python -m synthfs``
    argv = list(sys.argv[1:] if argv is None else argv)
    # Find the subcommand without importing every implementation.
    verbose = 0
    while argv and argv[0] in ("-v", "-vv", "--verbose"):
        verbose += 2 if argv[0] == "-vv" else 1
        argv.pop(0)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv or argv[0] in ("-h", "--help", "--version"):
            if argv and argv[0] == "--version":
                print(f"synthfs {__version__}")
                return 0
            parser.print_help()
            return 0 if argv else 2
        parser.error(f"unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})")
    name = argv.pop(0)
    if name == "run" and program:
        # Start-up makes ~100k objects that live as long as the process (modules,
        # classes, the syscall table): no cyclic collection before the guest starts
        # (interposer.run freezes them and enables it again), ~55 of them, ~12 ms.
        import gc

        gc.disable()
        # The warm start: this process becomes the guest, nothing of the interposer loaded.
        from synthfs.interposer import warm_client

        if warm_client.requested(argv):
            status = warm_client.run(["-v"] * verbose + argv)
            if status != warm_client.COLD:
                os._exit(status)
    import argparse
    import importlib

    module_name, help_text = COMMANDS[name]
    if name == "agent" and argv[:1] == ["sync"]:  # a client of a running agent
        name = "agent sync"
        argv.pop(0)
        module_name, help_text = "synthfs.agent.sync_cli", "wait until the agent's server has " \
            "every file closed on /data (--status: show the write-back queue)"
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"synthfs {name}", description=help_text)
    parser.add_argument("-v", "--verbose", action="count", default=verbose,
                        help="more logging (run: each handled syscall, as strace shows it)")
    module.configure(parser)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        status = int(module.main(args))
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        # The reader went away (`synthfs syscalls | head`): end quietly, as a tool killed
        # by SIGPIPE would; stdout goes to /dev/null so the final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 141
    if program and getattr(module, "FAST_EXIT", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _setup_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="synthfs %(name)s: %(levelname)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
