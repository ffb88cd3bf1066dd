"""``synthfs syscalls``: print the syscall table (the same rows the filter and dispatcher use)."""

from __future__ import annotations

import argparse

from synthfs.interposer.syscalls import TABLE, UNKNOWN_RANGE, Action

__all__ = ["HELP", "configure", "main", "render"]

HELP = "print the syscall table (support level, handler)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")


def render(markdown: bool = False) -> str:
    rows = []
    for spec in sorted(TABLE, key=lambda s: s.nr):
        if spec.action is Action.TRACE:
            filt = "trace" + (" (when args match)" if spec.when else "")
        elif spec.action is Action.ERRNO:
            import errno

            filt = f"{errno.errorcode.get(spec.errno, spec.errno)}" + (
                " (when args match)" if spec.when else ""
            )
        else:
            filt = "kill"
        rows.append(
            (str(spec.nr), spec.name, spec.level.value, filt, spec.handler or "-", spec.note)
        )
    header = ("nr", "syscall", "level", "filter", "handler", "note")
    tail = (
        f"Syscalls {UNKNOWN_RANGE.start}-{UNKNOWN_RANGE.stop - 1} (newer than this table): ENOSYS. "
        "Every other syscall runs natively (allowed by the filter, never stopped)."
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n\n" + tail + "\n"
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(5)]
    out = []
    for r in (header, *rows):
        out.append(
            "  ".join(r[i].ljust(widths[i]) for i in range(5)) + ("  " + r[5] if r[5] else "")
        )
    return "\n".join(out) + "\n\n" + tail + "\n"


def main(args: argparse.Namespace) -> int:
    print(render(args.markdown), end="")
    return 0
