"""Micro-benchmark: supervisor time per trapped syscall, broken down.

``synthfs bench --micro`` prints where the time of one trapped syscall goes,
so that performance work knows what to cut: the kernel's seccomp stop and
resume, decoding (GETREGS and copying the path out), namespace resolution and
the policy decision, the agent round trip (for synthetic paths), and the
resume (SETREGS, CONT, the exit stop when a register was rewritten).

This module is the stub the interposer's author fills in: the boundary is
:func:`measure_supervisor`, which must return one :class:`Breakdown` per
scenario. Until it exists, ``--micro`` says so and exits 2; nothing here
guesses numbers.

Trusts: the interposer it measures.
"""

from __future__ import annotations

import argparse
import sys

import attrs

__all__ = ["SCENARIOS", "Breakdown", "main", "measure_supervisor"]

#: What to measure, each as a loop of one syscall in a guest under the
#: supervisor (default: 100,000 iterations, the result divided by that).
SCENARIOS = {
    "host-stat": "stat() of a host path: trapped, checked, continued (target <= 15 us)",
    "data-stat-cached": "stat() of /data/x answered from the agent's attribute cache",
    "data-open-warm": "open()+close() of /data/x, cache known good (no agent round trip)",
    "data-open-revalidate": "open()+close() of /data/x with one agent round trip",
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


def measure_supervisor(scenario: str, iterations: int = 100_000) -> Breakdown:
    """Run ``scenario`` under the supervisor and return its breakdown.

    To be implemented with the interposer (issue #3): run a guest loop of the
    scenario's syscall under ``synthfs run`` with the supervisor's per-phase
    timers enabled, and divide by ``iterations``.
    """
    raise NotImplementedError("the supervisor micro-benchmark needs the interposer (issue #3)")


def main(args: argparse.Namespace) -> int:
    rows = []
    for name, description in SCENARIOS.items():
        try:
            rows.append(measure_supervisor(name))
        except NotImplementedError as exc:
            print(f"synthfs bench --micro: {name}: not available: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: {description}", file=sys.stderr)
    print("| scenario | total µs | stop | decode | policy | agent | resume |")
    print("|---|---|---|---|---|---|---|")
    for b in rows:
        print(b.row())
    return 0
