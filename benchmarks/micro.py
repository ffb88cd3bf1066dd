"""Micro-benchmark: supervisor time per trapped syscall, broken down.

``synthfs bench --micro`` prints where the time of one trapped syscall goes,
so that performance work knows what to cut: the kernel's seccomp stop and
resume, decoding (GETREGS and copying the path out), namespace resolution and
the policy decision, the agent round trip (for synthetic paths), and the
resume (SETREGS, CONT, the exit stop when a register was rewritten).

Two levels. :func:`measure_end_to_end`: loops of one syscall timed *inside*
the guest (so start-up is excluded), natively and under ``synthfs run
--agent``, ``strace --seccomp-bpf`` (a C tracer stopping on the same file
syscalls) and the bare one-rule seccomp filter; the difference per call is the
supervisor's whole cost. :func:`measure_supervisor`: the same loops under the
supervisor's phase timers (``synthfs run --stats``), one :class:`Breakdown`
per scenario — a run of the loop and a run without it, the difference divided
by the iterations, so start-up and teardown cancel out.

Trusts: the interposer it measures.
"""

from __future__ import annotations

import argparse
import os
import sys

import attrs

__all__ = [
    "SCENARIOS",
    "Breakdown",
    "EndToEnd",
    "main",
    "measure_end_to_end",
    "measure_supervisor",
]

#: What to measure, each as a loop of one syscall in a guest under the
#: supervisor (default: 100,000 iterations, the result divided by that).
SCENARIOS = {
    "host-stat": "stat() of a host path: trapped, checked, continued (target <= 15 us)",
    "data-stat-cached": "stat() of /data/x answered from the agent's attribute cache",
    "data-open-warm": "open()+close() of /data/x: a lease the interposer holds spares the "
    "agent round trip",
    "getpid": "getpid(): not trapped (the seccomp filter's cost only, ~40 ns)",
}


@attrs.frozen
class Breakdown:
    """Microseconds per syscall, by phase; ``total`` is measured end to end."""

    scenario: str
    iterations: int
    total_us: float
    stop_us: float = 0.0  # kernel seccomp stop + waitpid return
    decode_us: float = 0.0  # GETREGS, syscall table lookup, path copy-out
    policy_us: float = 0.0  # namespace resolution + policy decision + audit
    agent_us: float = 0.0  # agent round trip (0 when served locally)
    resume_us: float = 0.0  # SETREGS, CONT, exit stop if any

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.total_us:.1f} | {self.stop_us:.1f} | {self.decode_us:.1f} "
            f"| {self.policy_us:.1f} | {self.agent_us:.1f} | {self.resume_us:.1f} |"
        )


#: which guest loop measures each scenario
_LOOP_OF = {
    "host-stat": "host-stat",
    "data-stat-cached": "data-stat",
    "data-open-warm": "data-open",
    "getpid": "getpid",
}


def measure_supervisor(scenario: str, iterations: int = 100_000) -> Breakdown:
    """Run ``scenario`` under the supervisor with its phase timers (``--stats``).

    The loop runs twice, with ``iterations`` and with none, and the difference of
    the supervisor's counters is divided by ``iterations``: decode (GETREGS, the
    table, the Call), policy (the handler minus its agent time: namespace, host
    checks, policy), agent (round trips), resume (SETREGS, scratch writes, CONT).
    ``stop`` is what remains of the guest-timed total: the kernel's stop and
    resume, the exit stop of rewritten calls, and waking the supervisor.
    """
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    from synthfs.benchmarks.tools import embedded_stack, synthfs_exe
    from synthfs.benchmarks.workloads import PYTHON

    loop = _LOOP_OF[scenario]
    with tempfile.TemporaryDirectory(prefix="synthfs-micro-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "x").write_bytes(b"x" * 4096)
        with embedded_stack(data, Path(tmp) / "cache") as stack:
            runs = []
            for n in (iterations, 0):
                stats = Path(tmp) / f"stats-{n}.json"
                argv = [
                    *synthfs_exe(),
                    "run",
                    "--agent",
                    str(stack.agent_endpoint),
                    "--stats",
                    str(stats),
                    "--",
                    PYTHON,
                    "-c",
                    _guest(loop, "/data", n),
                ]
                p = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
                if p.returncode != 0:
                    raise RuntimeError(f"{scenario}: exit {p.returncode}: {p.stderr[-300:]}")
                runs.append(
                    (float(p.stdout.strip().splitlines()[-1]), json.loads(stats.read_text()))
                )
    (seconds, full), (_, empty) = runs
    n = max(iterations, 1)

    def per(key: str) -> float:
        return (full.get(key, 0) - empty.get(key, 0)) / n / 1000

    total = seconds / n * 1e6
    agent = per("agent_ns")
    decode, handler, resume = per("decode_ns"), per("handler_ns"), per("apply_ns")
    return Breakdown(
        scenario,
        iterations,
        total,
        stop_us=max(0.0, total - decode - handler - resume),
        decode_us=decode,
        policy_us=handler - agent,
        agent_us=agent,
        resume_us=resume,
    )


# ------------------------------------------------- end to end (works today)

#: guest loops, timed inside the guest (so start-up is excluded): (setup, body)
GUEST_LOOPS = {
    "getpid": ("", "os.getpid()"),
    "host-stat": ("", "os.stat('/etc/hostname')"),
    "data-stat": ("", "os.stat(D + '/x')"),
    "data-open": ("", "os.close(os.open(D + '/x', os.O_RDONLY))"),
}


@attrs.frozen
class EndToEnd:
    """Per-call cost of a scenario under a tool, minus native's, from guest-timed loops."""

    scenario: str
    tool: str
    iterations: int
    native_us: float  # per call, natively
    tool_us: float  # per call, under the tool
    error: str = ""

    @property
    def overhead_us(self) -> float:
        return self.tool_us - self.native_us


def _guest(scenario: str, data: str, n: int) -> str:
    setup, body = GUEST_LOOPS[scenario]
    return (
        f"import os, time\nD = {data!r}\n{setup}\n"
        f"for _ in range(1000): {body}\n"  # warm: cache filled, code paths hot
        f"t = time.perf_counter()\nfor _ in range({n}): {body}\n"
        f"print(time.perf_counter() - t)"
    )


#: The same loops in C (``synthfs bench --micro-c``): no interpreter between the calls, as
#: in the issue's figures. argv: OP PATH N; prints the best of three windows of N calls, in
#: seconds for all N (the Python loops' unit).
C_LOOP = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec / 1e9; }
static int once(const char *op, const char *path) {
    struct stat st;
    if (op[0] == 'g') return syscall(SYS_getpid) > 0 ? 0 : -1;
    if (op[0] == 's') return stat(path, &st);
    int fd = open(path, O_RDONLY);
    return fd < 0 ? -1 : close(fd);
}
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    long n = atol(argv[3]);
    for (int i = 0; i < 1000; i++)
        if (once(argv[1], argv[2])) { perror(argv[2]); return 1; }
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t = now();
        for (long i = 0; i < n; i++) once(argv[1], argv[2]);
        t = now() - t;
        if (t < best) best = t;
    }
    printf("%.9f\n", best);
    return 0;
}
"""

#: the C loop's operation and file for each scenario (D: the data directory)
C_LOOPS = {
    "getpid": ("getpid", ""),
    "host-stat": ("stat", "/etc/hostname"),
    "data-stat": ("stat", "{D}/x"),
    "data-open": ("open", "{D}/x"),
}


def _c_loop(tmp: str) -> str | None:
    """Compile :data:`C_LOOP` in ``tmp``; its path (None: no C compiler here)."""
    import shutil
    import subprocess
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src, exe = Path(tmp) / "loop.c", Path(tmp) / "loop"
    src.write_text(C_LOOP)
    p = subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True, check=False)
    return str(exe) if p.returncode == 0 else None


def _loop_seconds(argv: list[str]) -> tuple[float, str]:
    import subprocess

    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if p.returncode != 0:
        return 0.0, f"exit {p.returncode}: " + " | ".join(p.stderr.strip().splitlines()[-2:])
    try:
        return float(p.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return 0.0, f"unexpected output {p.stdout[-200:]!r}"


def measure_end_to_end(
    iterations: int = 20_000, pin: bool = True, c_loop: bool = False
) -> list[EndToEnd]:
    """Each scenario natively, under ``synthfs run --agent``, strace --seccomp-bpf
    and the bare seccomp filter; per-call time from loops timed inside the guest
    (Python loops, or with ``c_loop`` the :data:`C_LOOP` program; RuntimeError when
    it cannot be compiled). With ``c_loop`` the loop is timed three times in each run
    and the best window kept."""
    import shutil
    import tempfile
    from pathlib import Path

    from synthfs.benchmarks.tools import FLOOR_LAUNCHER, embedded_stack, synthfs_exe
    from synthfs.benchmarks.workloads import PYTHON

    prefix = ["taskset", "-c", "0"] if pin else []
    out: list[EndToEnd] = []
    with tempfile.TemporaryDirectory(prefix="synthfs-micro-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "x").write_bytes(b"x" * 4096)
        loop = _c_loop(tmp) if c_loop else None
        if c_loop and loop is None:
            raise RuntimeError("--micro-c needs a C compiler (cc or gcc)")
        with embedded_stack(data, Path(tmp) / "cache") as stack:
            ep = str(stack.agent_endpoint)
            tools: dict[str, tuple[list[str], str]] = {
                "synthfs": ([*synthfs_exe(), "run", "--agent", ep, "--"], "/data"),
                # the stat family over seccomp user notification (issue #12)
                "synthfs-notify": (
                    [*synthfs_exe(), "run", "--engine", "notify", "--agent", ep, "--"], "/data"
                ),
                "seccomp": ([sys.executable, "-c", FLOOR_LAUNCHER], str(data)),
            }
            if shutil.which("strace"):
                strace = ["strace", "--seccomp-bpf", "-f", "-e", "trace=file", "-o", "/dev/null"]
                tools["strace-bpf"] = (strace, str(data))
            for scenario in GUEST_LOOPS:
                n = iterations * (50 if scenario == "getpid" else 1)  # ~40 ns: needs more

                def guest(d: str, scenario: str = scenario, n: int = n) -> list[str]:
                    if loop is None:
                        return [PYTHON, "-c", _guest(scenario, d, n)]
                    op, path = C_LOOPS[scenario]
                    return [loop, op, path.replace("{D}", d), str(n)]

                nat, err = _loop_seconds([*prefix, *guest(str(data))])
                for name, (wrap, dpath) in tools.items():
                    if name == "seccomp" and scenario != "getpid":
                        continue
                    argv = [*prefix, *wrap, *guest(dpath)]
                    t, terr = _loop_seconds(argv)
                    per_nat, per_tool = nat / n * 1e6, t / n * 1e6
                    out.append(EndToEnd(scenario, name, n, per_nat, per_tool, err or terr))
    return out


def main(args: argparse.Namespace) -> int:
    iterations = int(getattr(args, "micro_iterations", 0) or 20_000)
    c_loop = bool(getattr(args, "micro_c", False))
    pin = not getattr(args, "micro_unpinned", False)
    try:
        rows = measure_end_to_end(iterations, pin=pin, c_loop=c_loop)
    except Exception as exc:  # reported, not hidden: the stack or synthfs run failed
        print(f"synthfs bench --micro: end-to-end loops failed: {exc!r}", file=sys.stderr)
        return 1
    kind = "C loops (best of 3 windows)" if c_loop else "loops"
    print(f"Per call, from {kind} of {iterations:,} (getpid: x50) timed inside the guest")
    print("(start-up excluded),", end=" ")
    print("pinned to CPU 0." if pin else "unpinned.", end=" ")
    print(f"overhead = tool - native. Load average {os.getloadavg()[0]:.1f}.\n")
    print("| scenario | tool | native µs | tool µs | overhead µs | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.tool} | {r.native_us:.2f} | {r.tool_us:.2f} "
            f"| {r.overhead_us:.2f} | {r.error} |"
        )
    print()
    try:
        phases = [measure_supervisor(name) for name in SCENARIOS]
    except NotImplementedError as exc:
        print(f"Breakdown by phase: not available yet ({exc}).")
        return 0
    print("| scenario | total µs | stop | decode | policy | agent | resume |")
    print("|---|---|---|---|---|---|---|")
    for b in phases:
        print(b.row())
    return 0
