"""``synthfs audit``: read an audit log (``synthfs run --audit FILE``) back.

    synthfs audit summary FILE [FILE ...]     (``-`` reads stdin)

``summary`` prints one row per app, operation, path glob and decision with
its count (the files of a directory that holds several of them are counted
under ``DIR/*``), then the totals. Exit 0; 1 when a file cannot be read or a
line is not an audit record (``FILE:LINE: what is wrong``, one line, nothing
printed for that file); usage errors exit 2 (argparse).

Trusts nothing in the log: a line is a JSON object with the fields the
supervisor writes, or an error.
"""

from __future__ import annotations

import argparse
import sys

from synthfs.policy.audit import Logged, read_records, summary_table

__all__ = ["HELP", "configure", "main"]

HELP = "summarise an audit log (synthfs run --audit FILE)"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="{summary}")
    summary = sub.add_parser(
        "summary",
        help="a table of the decisions: app x op x path glob x decision x count",
    )
    summary.add_argument("files", nargs="+", metavar="FILE", help="audit log ('-': stdin)")


def main(args: argparse.Namespace) -> int:
    if args.audit_command != "summary":
        print("synthfs audit: say what to do: synthfs audit summary FILE", file=sys.stderr)
        return 2
    records: list[Logged] = []
    for name in args.files:
        try:
            records += _read(name)
        except OSError as exc:
            print(f"synthfs audit summary: {name}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"synthfs audit summary: {exc}", file=sys.stderr)
            return 1
    if not records:
        print(f"no decisions in {', '.join(args.files)}")
        return 0
    print(summary_table(records))
    return 0


def _read(name: str) -> list[Logged]:
    if name == "-":
        return read_records(sys.stdin.buffer, "<stdin>")
    with open(name, "rb") as f:
        return read_records(f, name)
