"""The audit channel: one typed JSON line per decision (``--audit``).

Written by the supervisor; read by humans and tools (``jq``, ``synthfs audit
summary``). :class:`Denials` keeps what the end-of-run summary shows (the
first few denials of a run); :func:`read_records` and :func:`summary_table`
read a log back, trusting nothing in it (a bad line is a one-line error).
"""

from __future__ import annotations

import datetime
import errno as _errno
import json
from collections.abc import Iterable, Sequence

import attrs

from synthfs.policy.engine import ERRNO_NAMES, App, Decision, Op


@attrs.frozen(slots=True)
class AuditRecord:
    """One audited decision; the supervisor writes ``to_json()`` lines."""

    time: float  # seconds since the epoch
    pid: int
    exe: str
    app: str
    syscall: str
    path: str
    op: str
    decision: str  # "allow" | "deny"
    rule: str
    errno: int
    latency_us: float
    via: str = ""  # a host path reached through a repository symlink: that link
    #: False for a denial ``--warn`` (``--permissive``) reported and let through
    enforced: bool = True

    @classmethod
    def from_decision(
        cls,
        *,
        time: float,
        pid: int,
        exe: str,
        app: App | str,
        syscall: str,
        path: str,
        op: Op | str,
        decision: Decision,
        latency_us: float,
        via: str = "",
        enforced: bool = True,
    ) -> AuditRecord:
        return cls(
            time=time,
            pid=pid,
            exe=exe,
            app=app if isinstance(app, str) else app.name,
            syscall=syscall,
            path=path,
            op=str(op),
            decision=decision.action.value,
            rule=decision.rule,
            errno=decision.errno,
            latency_us=latency_us,
            via=via,
            enforced=enforced,
        )

    def to_json(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.time, datetime.UTC)
        via: dict[str, object] = {"via": self.via} if self.via else {}
        if not self.enforced:
            via["enforced"] = False
        return json.dumps(
            {
                "event": "policy/decision",
                "time": stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "pid": self.pid,
                "exe": self.exe,
                "app": self.app,
                "syscall": self.syscall,
                "path": self.path,
                "op": self.op,
                "decision": self.decision,
                "rule": self.rule,
                "errno": self.errno,
                "errname": ERRNO_NAMES.get(self.errno, _errno.errorcode.get(self.errno, ""))
                if self.errno
                else "",
                "latency_us": round(self.latency_us, 3),
                **via,
            },
            separators=(",", ":"),
        )


# -- the end-of-run summary ------------------------------------------------------------------

#: how many denials the end-of-run summary names (the others are counted)
SHOWN = 3


@attrs.frozen(slots=True)
class Denied:
    """One denial the end-of-run summary names."""

    app: str
    op: str
    path: str
    errno: int
    rule: str
    enforced: bool  # False: ``--warn`` let it through

    def line(self) -> str:
        name = _errname(self.errno)
        verdict = name if self.enforced else f"would be {name}"
        return f"app {self.app}: {self.op} {printable(self.path)} ({verdict}; rule {self.rule})"


@attrs.define
class Denials:
    """The policy's denials in one run: counted, the first few distinct ones kept."""

    enforced: int = 0
    warned: int = 0
    first: list[Denied] = attrs.field(factory=list)

    def add(self, denied: Denied) -> None:
        if denied.enforced:
            self.enforced += 1
        else:
            self.warned += 1
        if len(self.first) < SHOWN and denied not in self.first:
            self.first.append(denied)

    def summary(self, audit: str | None = None) -> str:
        """What ``synthfs run`` prints on stderr at the end ("" when nothing was denied)."""
        total = self.enforced + self.warned
        if not total:
            return ""
        if not self.warned:
            head = f"the policy denied {_accesses(self.enforced)}"
        elif not self.enforced:
            head = f"the policy would have denied {_accesses(self.warned)} (not enforced)"
        else:
            head = (f"the policy denied {_accesses(self.enforced)}, and would have denied "
                    f"{self.warned} more (not enforced)")
        lines = [f"synthfs: {head}:"]
        lines += [f"  {d.line()}" for d in self.first]
        more = total - len(self.first)
        if more and audit:
            lines.append(f"  ... and {more} more: every denial is in {audit}")
        elif more:
            lines.append(f"  ... and {more} more (--audit FILE records every one)")
        elif audit:
            lines.append(f"  (recorded in {audit})")
        return "\n".join(lines)


def _accesses(n: int) -> str:
    return f"{n} access" if n == 1 else f"{n} accesses"


def _errname(err: int) -> str:
    return ERRNO_NAMES.get(err, _errno.errorcode.get(err, str(err)))


def printable(text: str) -> str:
    """``text`` with control characters escaped (a path may hold any byte but ``/`` and NUL)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- reading a log back (``synthfs audit summary``) -------------------------------------------


@attrs.frozen(slots=True)
class Logged:
    """The fields of one audit line that a summary counts."""

    app: str
    op: str
    path: str
    decision: str  # "allow" | "deny"
    errno: int
    enforced: bool

    @classmethod
    def from_json(cls, line: str) -> Logged:
        """One line of an audit log; ValueError saying what is wrong with it."""
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError):
            raise ValueError("not JSON") from None
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        if obj.get("event") != "policy/decision":
            raise ValueError(f"not a policy decision (event {obj.get('event')!r})")
        fields = {}
        for key in ("app", "op", "path", "decision"):
            value = obj.get(key)
            if not isinstance(value, str):
                raise ValueError(f"{key!r} is missing or not a string")
            fields[key] = value
        if fields["decision"] not in ("allow", "deny"):
            raise ValueError(f"decision {fields['decision']!r} is neither 'allow' nor 'deny'")
        err = obj.get("errno", 0)
        if not isinstance(err, int) or isinstance(err, bool) or not 0 <= err < 4096:
            raise ValueError(f"errno {err!r} is not an errno")
        enforced = obj.get("enforced", True)
        if not isinstance(enforced, bool):
            raise ValueError(f"enforced {enforced!r} is not true or false")
        return cls(errno=err, enforced=enforced, **fields)

    @property
    def verdict(self) -> str:
        if self.decision == "allow":
            return "allow"
        return f"{'deny' if self.enforced else 'warn'} {_errname(self.errno)}"


def read_records(lines: Iterable[bytes | str], name: str) -> list[Logged]:
    """Every record of a log; ValueError ``NAME:LINE: what is wrong`` at the first bad line
    (blank lines are skipped)."""
    out = []
    for number, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            if not text.strip():
                continue
            out.append(Logged.from_json(text))
        except UnicodeDecodeError:
            raise ValueError(f"{name}:{number}: not UTF-8 text") from None
        except ValueError as exc:
            raise ValueError(f"{name}:{number}: {exc}") from None
    return out


def _glob(paths: set[str]) -> dict[str, str]:
    """Each path -> the glob it is counted under: ``DIR/*`` for the files of a
    directory that holds two or more of them, the path itself otherwise (network
    addresses and ``a -> b`` renames are never collapsed)."""
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        if path.startswith("/") and " -> " not in path:
            by_dir.setdefault(path.rpartition("/")[0], []).append(path)
    out = {path: path for path in paths}
    for parent, members in by_dir.items():
        if len(members) >= 2:
            for path in members:
                out[path] = f"{parent}/*"
    return out


def summary_table(records: Sequence[Logged]) -> str:
    """app x op x path glob x decision x count, one row each, aligned."""
    groups: dict[tuple[str, str, str], set[str]] = {}
    for r in records:
        groups.setdefault((r.app, r.op, r.verdict), set()).add(r.path)
    globs = {key: _glob(paths) for key, paths in groups.items()}
    counts: dict[tuple[str, str, str, str], int] = {}
    for r in records:
        key = (r.app, r.op, globs[(r.app, r.op, r.verdict)][r.path], r.verdict)
        counts[key] = counts.get(key, 0) + 1
    header = ("APP", "OP", "PATH", "DECISION", "COUNT")
    rows = [header] + [
        (printable(app), op, printable(glob), verdict, str(n))
        for (app, op, glob, verdict), n in sorted(counts.items())
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False))
        + "  " + row[-1].rjust(widths[-1])
        for row in rows
    ]
    denied = sum(r.decision == "deny" for r in records)
    warned = sum(r.decision == "deny" and not r.enforced for r in records)
    foot = f"{_decisions(len(records))}, {denied} denied"
    if warned:
        foot += f" ({warned} of them let through by --warn: the 'warn' rows)"
    return "\n".join([*lines, foot])


def _decisions(n: int) -> str:
    return "1 decision" if n == 1 else f"{n} decisions"
