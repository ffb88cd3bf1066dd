"""``synthfs syscalls``: print the syscall table (the same rows the filter and dispatcher use)."""

from __future__ import annotations

import argparse
import errno

from synthfs.interposer.syscalls import TABLE, UNKNOWN_RANGE, Action, Reach, Role, SyscallSpec

__all__ = ["HELP", "configure", "main", "matrix", "render"]

HELP = "print the syscall table (support level, handler)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--security-matrix",
        action="store_true",
        help="print SECURITY.md's matrix of the guard rows (what each reaches, what synthfs does)",
    )


def render(markdown: bool = False) -> str:
    rows = []
    for spec in sorted(TABLE, key=lambda s: s.nr):
        if spec.action is Action.TRACE:
            filt = "trace" + (" (when args match)" if spec.when else "")
        elif spec.action is Action.ERRNO:
            filt = f"{errno.errorcode.get(spec.errno, spec.errno)}" + (
                " (when args match)" if spec.when else ""
            )
        else:
            filt = "kill"
        rows.append(
            (str(spec.nr), spec.name, spec.level.value, filt, _channel(spec),
             _handler_name(spec), spec.note)
        )
    header = ("nr", "syscall", "level", "filter", "channel", "handler", "note")
    tail = (
        f"Syscalls {UNKNOWN_RANGE.start}-{UNKNOWN_RANGE.stop - 1} (newer than this table): ENOSYS. "
        "Every other syscall runs natively (allowed by the filter, never stopped). "
        "channel: how a traced call reaches the supervisor under 'synthfs run --engine "
        "notify' (notify: seccomp user notification; ptrace: a ptrace stop, as every "
        "traced row under --engine ptrace)."
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n\n" + tail + "\n"
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(6)]
    out = []
    for r in (header, *rows):
        out.append(
            "  ".join(r[i].ljust(widths[i]) for i in range(6)) + ("  " + r[6] if r[6] else "")
        )
    return "\n".join(out) + "\n\n" + tail + "\n"


#: (column text, roles that imply it, flag that implies it)
_NAMES: tuple[tuple[str, frozenset[Role], Reach], ...] = (
    ("path", frozenset({Role.PATH, Role.PATH2}), Reach.NONE),
    ("fd", frozenset({Role.FD, Role.DIRFD, Role.DIRFD2}), Reach.NONE),
    ("pid/pgid", frozenset(), Reach.PID),
    ("memory", frozenset(), Reach.MEMORY),
    ("device", frozenset(), Reach.DEVICE),
    ("terminal", frozenset(), Reach.TERMINAL),
    ("sockaddr", frozenset({Role.SOCKADDR}), Reach.NONE),
)
_CHANGES: tuple[tuple[str, Reach], ...] = (
    ("identity", Reach.IDENTITY),
    ("memory map", Reach.MEMORY_MAP),
    ("another process", Reach.OTHER_PROCESS),
    ("mounts/ns", Reach.MOUNT_NS),
)


def _does(spec: SyscallSpec) -> str:
    if spec.action is Action.ERRNO:
        what = errno.errorcode.get(spec.errno, str(spec.errno))
        head = f"{what} when args match" if spec.when else f"always {what}"
    elif spec.action is Action.KILL:
        head = "kill"
    else:
        head = f"`{_handler_name(spec)}`" + (" when args match" if spec.when else "")
    return f"{head}: {spec.note}" if spec.note else head


#: what shows a row that names no test of its own: the suite that runs its kind
_SUITES = {
    "path": "tests/conformance/test_conformance.py::test_conformance",  # native vs synthfs
    "refused": "tests/interposer/test_syscalls.py"
    "::test_rows_match_the_kernel_numbers_and_handlers_exist",
    "socket": "tests/interposer/test_network.py"
    "::test_deny_refuses_every_ip_address_and_allow_lets_all_through",
    "escape": "tests/escape/test_escape.py::test_namespace_escape",
}


def _shown_by(spec: SyscallSpec) -> str:
    if spec.shown_by:
        return spec.shown_by
    if spec.action is not Action.TRACE:
        return _SUITES["refused"]
    if Role.SOCKADDR in spec.args or Role.FAMILY in spec.args:
        return _SUITES["socket"]
    if Role.PATH in spec.args or Role.FD in spec.args or Role.DIRFD in spec.args:
        return _SUITES["path"]
    return _SUITES["escape"]


def matrix() -> str:
    """SECURITY.md's matrix: every row of the table, from the table itself (a row that
    names no test of its own is shown by the suite that runs its kind)."""
    lines = [
        "| syscall | can name | can change | synthfs does | shown by |",
        "|---|---|---|---|---|",
    ]
    for spec in sorted(TABLE, key=lambda s: (s.name, s.nr)):
        roles = set(spec.args)
        names = [t for t, r, f in _NAMES if roles & r or (f and f in spec.reach)]
        changes = [t for t, f in _CHANGES if f in spec.reach]
        lines.append(
            f"| `{spec.name}` | {', '.join(names) or '-'} | {', '.join(changes) or '-'} "
            f"| {_does(spec).replace('|', '/')} | `{_shown_by(spec)}` |"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    if getattr(args, "security_matrix", False):
        print(matrix(), end="")
        return 0
    print(render(args.markdown), end="")
    return 0


def _channel(spec: SyscallSpec) -> str:
    """The kernel channel of a traced row (``-``: the filter alone answers it)."""
    return spec.channel.value if spec.action is Action.TRACE else "-"


def _handler_name(spec: SyscallSpec) -> str:
    return spec.handler.__name__ if spec.handler is not None else "-"
