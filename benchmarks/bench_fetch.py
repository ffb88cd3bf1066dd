"""Benchmark of cold reads: the agent's fetch rate, ``head -c 1`` and ``cat`` of a cold file.

Run (a script, not a test; real server and agent processes, the server on
loopback ``tcp://``):

    .venv/bin/python benchmarks/bench_fetch.py                  # 512 MiB, 3 rounds
    .venv/bin/python benchmarks/bench_fetch.py --size-mib 128 --rounds 1 --json

What it measures, each round on a file given a new mtime first (a new version,
so the agent's copy is stale and the next open fetches it):

* ``fetch`` (alone with ``--fetch-only``): one ``Open`` sent straight to the
  agent's socket, timed from send to reply: the whole cold fetch (Stat, Reads,
  writes into the cache, install),
  as MB/s (10^6 bytes); with the CPU seconds the server and the agent spent
  on it (from ``/proc/PID/stat``), which the machine's load disturbs less;
* ``head``: ``synthfs run --agent EP -- head -c 1 /data/big.bin``, less the
  same run of ``true`` (start-up excluded);
* ``cat`` (the harness's W1c): ``synthfs run --agent EP -- cat /data/big.bin``
  to ``/dev/null``, less ``true``, divided by a native ``cat`` of the served file.

The tree measured is the one this script's ``synthfs`` is imported from: to
compare with another commit, run the other tree's copy of this script with its
own virtualenv (or ``PYTHONPATH=DIR``) and the same arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["main"]


def _cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children (threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _fresh(path: str) -> None:
    """A new mtime: a new version for the server, a stale copy for the agent."""
    time.sleep(0.01)
    os.utime(path)


def measure(size_mib: int, rounds: int, fetch_only: bool = False) -> dict[str, Any]:
    from synthfs.agent.embedded import embedded
    from synthfs.protocol.client import Client
    from synthfs.protocol.messages import Open, Opened

    out: dict[str, list[float]] = {k: [] for k in (
        "fetch_s", "fetch_mbps", "server_cpu_s", "agent_cpu_s", "head_s", "true_s", "cat_s",
        "native_cat_s")}
    synthfs = [sys.executable, "-m", "synthfs", "run"]
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        data = os.path.join(tmp, "data")
        os.mkdir(data)
        big = os.path.join(data, "big.bin")
        with open(big, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(size_mib):
                f.write(block)
        size = size_mib << 20
        port = 20000 + os.getpid() % 20000
        with embedded(data, cache_dir=os.path.join(tmp, "cache"), cache_size=4 * size,
                      server_listen=f"tcp://127.0.0.1:{port}") as stack:
            run = [*synthfs, "--agent", stack.agent_endpoint, "--"]
            client = Client(stack.agent_endpoint, timeout=600)
            for _ in range(rounds):
                _fresh(big)
                s0, a0 = _cpu(stack.server_pid), _cpu(stack.agent_pid)
                t0 = time.perf_counter()
                reply = client.call(Open(path="/big.bin", flags=os.O_RDONLY))
                dt = time.perf_counter() - t0
                assert isinstance(reply, Opened), reply
                out["fetch_s"].append(dt)
                out["fetch_mbps"].append(size / dt / 1e6)
                out["server_cpu_s"].append(_cpu(stack.server_pid) - s0)
                out["agent_cpu_s"].append(_cpu(stack.agent_pid) - a0)
                if fetch_only:
                    continue
                out["true_s"].append(_run([*run, "true"]))
                _fresh(big)
                out["head_s"].append(_run([*run, "head", "-c", "1", "/data/big.bin"]))
                _fresh(big)
                out["cat_s"].append(_run([*run, "cat", "/data/big.bin"]))
                out["native_cat_s"].append(_run(["cat", big]))
            client.close()
    med = {k: statistics.median(v) for k, v in out.items() if v}
    if not fetch_only:
        med["head_less_startup_s"] = med["head_s"] - med["true_s"]
        med["w1c_ratio"] = (med["cat_s"] - med["true_s"]) / med["native_cat_s"]
    return {"size_mib": size_mib, "rounds": rounds, "median": med, "all": out,
            "load": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fetch-only", action="store_true", help="only the Open to the agent")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = measure(args.size_mib, args.rounds, args.fetch_only)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    m = r["median"]
    print(f"{args.size_mib} MiB, {args.rounds} rounds, load {r['load'][0]:.1f} (medians)")
    print(f"  cold fetch (Open to the agent): {m['fetch_s']:.3f} s = {m['fetch_mbps']:.0f} MB/s;"
          f" CPU server {m['server_cpu_s']:.2f} s, agent {m['agent_cpu_s']:.2f} s")
    if args.fetch_only:
        return 0
    print(f"  head -c 1, cold: {m['head_s']:.3f} s ({m['head_less_startup_s']:.3f} s without "
          f"start-up; true: {m['true_s']:.3f} s)")
    print(f"  cat, cold (W1c): {m['cat_s']:.3f} s, native {m['native_cat_s']:.3f} s: "
          f"{m['w1c_ratio']:.2f}x without start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
