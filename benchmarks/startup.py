"""Start-up benchmark: what one ``synthfs run ... -- true`` costs, beside ``true`` and strace.

``synthfs bench --startup`` runs ``true`` natively, under ``strace -f`` (a C
tracer's start-up), under ``synthfs run --warm --agent EP`` (a warm supervisor,
``synthfs warm --agent EP``, started for the measurement), under ``synthfs run
--agent EP`` (an agent already running) and under ``synthfs run --data DIR`` (a
private server and agent started and stopped by the run), round-robin so that
all five see the same load. Each gets one untimed run first (it compiles and keeps the
seccomp filter, as any earlier run on the machine would have).

Two figures per row, best and median of the timed runs: wall-clock time, and
the CPU time of the process and every child it waited for (``wait4``'s
rusage: with ``--data`` the server and the agent are included; with
``--agent`` the running agent's share is not, it is another process's; with
``--warm`` the runs' supervisors, children of the warm supervisor, are added:
their CPU over all the runs, shared evenly). On a
shared machine the CPU time is the steadier figure: the wall clock also counts
the other processes' turns. Not pinned: ``--data`` starts three processes that
boot in parallel.

Trusts: the interposer it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

__all__ = ["TARGETS", "Startup", "main", "measure_startup"]

#: the issue's targets (#12), wall-clock seconds, for the table
TARGETS = {"synthfs --agent": 0.05, "synthfs --warm": 0.05, "synthfs --data": 0.25}


@attrs.frozen
class Startup:
    """The timed runs of one way to start ``true`` (seconds)."""

    tool: str
    command: str
    wall: tuple[float, ...]
    cpu: tuple[float, ...]
    error: str = ""

    def row(self) -> str:
        if self.error:
            return f"| {self.tool} | `{self.command}` | {self.error} | | | | |"
        target = TARGETS.get(self.tool)
        return (
            f"| {self.tool} | `{self.command}` | {_ms(min(self.wall))} "
            f"| {_ms(statistics.median(self.wall))} | {_ms(min(self.cpu))} "
            f"| {_ms(statistics.median(self.cpu))} "
            f"| {'' if target is None else '≤ ' + _ms(target)} |"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, waited-for children included) of one run."""
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, env or os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"exit {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_utime + usage.ru_stime


class _Warm:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def children_cpu(self) -> float:
        """User + system seconds of the warm supervisor's reaped children (the runs)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _warm_supervisor(sock: Path, agent: str) -> Iterator[_Warm]:
    """``synthfs warm --agent AGENT`` on ``sock``, listening when this yields."""
    from synthfs.benchmarks.tools import synthfs_exe

    proc = subprocess.Popen([*synthfs_exe(), "warm", "--socket", str(sock), "--agent", agent],
                            stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if b"serving" not in line:
            raise RuntimeError(f"synthfs warm did not start: {line.decode(errors='replace')}")
        yield _Warm(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure_startup(runs: int = 20) -> list[Startup]:
    """The four rows (see the module's docstring); a row that fails says why."""
    import tempfile

    from synthfs.benchmarks.tools import embedded_stack, synthfs_exe

    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="synthfs-startup-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "x").write_bytes(b"x")
        with embedded_stack(data, Path(tmp) / "agent-cache") as stack:
            ep = str(stack.agent_endpoint)
            ways: dict[str, tuple[list[str], str]] = {
                "native": ([true], "true"),
                "synthfs --agent": ([*synthfs_exe(), "run", "--agent", ep, "--", true],
                                    "synthfs run --agent EP -- true"),
                "synthfs --data": ([*synthfs_exe(), "run", "--data", str(data), "--cache",
                                    str(Path(tmp) / "run-cache"), "--", true],
                                   "synthfs run --data DIR -- true"),
            }
            warm_sock = Path(tmp) / "warm" / "w.sock"
            warm_env = {**os.environ, "SYNTHFS_WARM_SOCKET": str(warm_sock)}
            ways["synthfs --warm"] = ([*synthfs_exe(), "run", "--warm", "--agent", ep, "--", true],
                                      "synthfs run --warm --agent EP -- true")
            if shutil.which("strace"):
                ways["strace -f"] = (["strace", "-f", "-o", "/dev/null", true],
                                     "strace -f -o /dev/null true")
            order = ["native", "strace -f", "synthfs --warm", "synthfs --agent", "synthfs --data"]
            names = [n for n in order if n in ways]
            times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
            errors: dict[str, str] = {}
            with _warm_supervisor(warm_sock, ep) as warm:
                for i in range(runs + 1):  # run 0: the untimed warm-up
                    if i == 1:
                        warm_cpu = warm.children_cpu()
                    for name in names:
                        if name in errors:
                            continue
                        try:
                            measured = _timed(ways[name][0],
                                              warm_env if name == "synthfs --warm" else None)
                        except (OSError, RuntimeError) as exc:
                            errors[name] = str(exc)
                            continue
                        if i:
                            times[name].append(measured)
                time.sleep(0.5)  # the last run's supervisor ends (and is reaped)
                # The warm runs' supervisors are the warm supervisor's children: their CPU
                # time, shared evenly, is added to each warm run's own (the guest's).
                per_run = (warm.children_cpu() - warm_cpu) / max(1, runs)
                times["synthfs --warm"] = [(w, c + per_run) for w, c in times["synthfs --warm"]]
    return [
        Startup(name, ways[name][1], tuple(w for w, _ in times[name]),
                tuple(c for _, c in times[name]), errors.get(name, ""))
        for name in names
    ]


def markdown(rows: list[Startup], runs: int) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"Start-up of `true`: {runs} timed runs each, round-robin, not pinned; "
        f"load average {load:.1f} on {os.cpu_count()} CPUs at the end. CPU = user + system "
        "of the process and the children it waited for.",
        "",
        "| tool | command | wall best | wall median | CPU best | CPU median | target (wall) |",
        "|---|---|---|---|---|---|---|",
        *(r.row() for r in rows),
    ]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    runs = int(getattr(args, "startup_runs", 0) or 20)
    try:
        rows = measure_startup(runs)
    except Exception as exc:  # reported, not hidden: the stack failed to start
        print(f"synthfs bench --startup: {exc!r}", file=sys.stderr)
        return 1
    print(markdown(rows, runs), end="")
    return 1 if any(r.error for r in rows) else 0
