"""The audit channel: one typed JSON line per decision (``--audit``).

Written by the supervisor; read by humans and tools (``jq``).
"""

from __future__ import annotations

import datetime
import errno as _errno
import json

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
        )

    def to_json(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.time, datetime.UTC)
        via = {"via": self.via} if self.via else {}
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
