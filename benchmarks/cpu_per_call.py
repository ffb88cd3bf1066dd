"""CPU per trapped call under each engine and strace (issue #12): the C loop of
:mod:`synthfs.benchmarks.micro`, run with N = 0 and N calls (1,000 warm, then three
windows of N), pinned (``taskset -c 0``); CPU = user + system of the tool and all it
waited for; per call = (CPU(N) - CPU(0)) / 3N, best of ROUNDS, tools interleaved in
each round. ``python -m synthfs.benchmarks.cpu_per_call [N] [ROUNDS]``; prints a
Markdown table. Trusts: the tools it runs.
"""
# ruff: noqa: E501, E702
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from synthfs.benchmarks.micro import C_LOOP
from synthfs.benchmarks.tools import embedded_stack, synthfs_exe

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
tmp = Path(tempfile.mkdtemp(prefix="n2bench-"))
data = tmp / "data"; data.mkdir(); (data / "x").write_bytes(b"x" * 4096)
(tmp / "loop.c").write_text(C_LOOP)
subprocess.run(["cc", "-O2", "-o", str(tmp / "loop"), str(tmp / "loop.c")], check=True)
LOOP = str(tmp / "loop")

def cpu(argv):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(argv, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{argv}: {p.stderr[-500:]}")
    c = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return c, float(p.stdout.split()[-1])

scen = {"host stat": ("stat", "/etc/hostname", False), "/data stat": ("stat", "x", True),
        "/data open+close": ("open", "x", True), "host open+close": ("open", "/etc/hostname", False)}
with embedded_stack(data, tmp / "cache") as stack:
    ep = str(stack.agent_endpoint)
    tools = {
        "native": ([], str(data)),
        "ptrace": ([*synthfs_exe(), "run", "--engine", "ptrace", "--agent", ep, "--"], "/data"),
        "notify": ([*synthfs_exe(), "run", "--engine", "notify", "--agent", ep, "--"], "/data"),
        "strace": (["strace", "--seccomp-bpf", "-f", "-e", "trace=file", "-o", "/dev/null"], str(data)),
    }
    best = {}
    for r in range(ROUNDS):
        for sname, (op, path, isdata) in scen.items():
            for tname, (wrap, d) in tools.items():
                p = f"{d}/{path}" if isdata else path
                c0, _ = cpu(["taskset", "-c", "0", *wrap, LOOP, op, p, "0"])
                c1, wall = cpu(["taskset", "-c", "0", *wrap, LOOP, op, p, str(N)])
                per = (c1 - c0) / (3 * N) * 1e6
                key = (sname, tname)
                b = best.get(key)
                best[key] = (min(per, b[0]) if b else per, min(wall / N * 1e6, b[1]) if b else wall / N * 1e6)
        print(f"round {r} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
print(f"N={N} x3 windows, best of {ROUNDS} rounds, pinned taskset -c 0, load now {os.getloadavg()}")
print("| scenario | tool | CPU µs/call | CPU overhead µs | wall µs/call (best window) |")
print("|---|---|---|---|---|")
for sname in scen:
    nat = best[(sname, "native")][0]
    for tname in tools:
        c, w = best[(sname, tname)]
        print(f"| {sname} | {tname} | {c:.2f} | {c - nat:.2f} | {w:.2f} |")
