"""Micro-benchmark of the wire codec, and a before/after driver for it and the round trip.

Run (a script, not a test):

    .venv/bin/python benchmarks/bench_codec.py                 # this tree, µs per op
    .venv/bin/python benchmarks/bench_codec.py --json
    .venv/bin/python benchmarks/bench_codec.py --against DIR   # DIR: another checkout
    .venv/bin/python benchmarks/bench_codec.py --against DIR --trusted

What it measures: ``encode`` and ``decode`` of a ``Stat``, a ``StatReply``, a
``Listing`` of 1,000 entries and a 4 MiB ``Data``, each op timed on its own
(``perf_counter`` around one call), reported as median and p99 in µs.
Construction of the message is not timed; decoding times the whole
``decode(frame)`` (msgpack and validation).

``--against DIR`` runs this script's measurement in child processes, one per
tree, alternating ``DIR`` (before) and this tree (after) for ``--rounds``
rounds, so both see the same machine load (the VM is shared and noisy); it
prints the median of the per-round medians and of the per-round p99s for
each (``--json`` keeps every round, ``--show FILE`` prints it again).
``--trusted`` also alternates ``benchmarks/bench_trusted.py --json
--size-mib 4 --fills 1`` of each tree (real server and agent processes) and
reports the stat round trips from it. The DIR tree is used as it is: make it
with ``git archive REV | tar -x -C DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]

HERE = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_us": statistics.median(s) * 1e6,
            "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6, "n": len(s)}


def _time(fn: Callable[[], object], n: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    clock = time.perf_counter
    out = []
    for _ in range(n):
        t = clock()
        fn()
        out.append(clock() - t)
    return _percentiles(out)


def measure(scale: float = 1.0) -> dict[str, dict[str, float]]:
    """µs per encode / decode of each message, in this process (imports ``protocol`` now)."""
    from synthfs.protocol import messages as m
    from synthfs.protocol.codec import decode, encode

    a = m.Attrs(kind=m.FileKind.FILE, size=123456, mode=0o644, mtime_ns=1_700_000_000_123_456_789,
                ctime_ns=1_700_000_000_123_456_789, ino=987654321, nlink=1,
                version="1700000000123456789-123456-987654321-2049")
    cases: list[tuple[str, Any, int]] = [
        ("Stat", m.Stat(path="/datasets/images/train/000123.jpg"), 20000),
        ("StatReply", m.StatReply(attrs=a), 20000),
        ("Listing1000", m.Listing(attrs=a, entries=tuple(
            m.DirEntry(name=f"{i:06d}.jpg", attrs=a) for i in range(1000))), 200),
        ("Data4MiB", m.Data(data=os.urandom(4 * MIB), eof=True, version=a.version), 200),
    ]
    token = "t" * 43
    res: dict[str, dict[str, float]] = {}
    for name, msg, n in cases:
        n = max(20, int(n * scale))
        frame = encode(msg, 2**40 + 7, token)
        assert decode(frame).msg == msg
        res[f"encode {name}"] = _time(lambda msg=msg: encode(msg, 2**40 + 7, token), n, n // 10)
        res[f"decode {name}"] = _time(lambda frame=frame: decode(frame), n, n // 10)
        res[f"encode {name}"]["frame_bytes"] = len(frame)
    return res


def _child(root: Path, scale: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(root))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "sys.path.insert(0, sys.argv[2]); import bench_codec as b; "
            "print(json.dumps(b.measure(float(sys.argv[3]))))")
    out = subprocess.run([sys.executable, "-c", code, str(root), str(HERE / "benchmarks"),
                          str(scale)], env=env, check=True, capture_output=True, text=True,
                         cwd=root)
    got: dict[str, Any] = json.loads(out.stdout)
    return got


def _trusted(root: Path, stats: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_trusted.py"), "--json",
                          "--size-mib", "4", "--fills", "1", "--stats", str(stats)],
                         check=True, capture_output=True, text=True, cwd=root)
    got: dict[str, Any] = json.loads(out.stdout)
    return got


def _trusted_rows(r: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        "stat two hops, agent->server ipc": r["stat_ipc"]["two_hops"],
        "stat two hops, agent->server tcp": r["stat_tcp"]["two_hops"],
        "stat server alone, ipc (one hop)": r["stat_ipc"]["server_only"],
        "stat agent attr-cache hit (one hop)": r["agent_attr_cache_hit"],
        "warm Open, revalidation (two hops)": r["fill"]["warm_open"],
        "Client.call(Stat) on a bare echo, ipc": r["zmq_echo_ipc"]["client"],
        "bare ZeroMQ echo, ipc (floor)": r["zmq_echo_ipc"]["raw"],
    }


def compare(before: Path, rounds: int, scale: float, trusted: bool, stats: int) -> dict[str, Any]:
    """Alternate before/after children; per row, the per-round medians and p99s of each."""
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "after": []}
    trees = {"before": before.resolve(), "after": HERE}
    loads = [os.getloadavg()[0]]
    for i in range(rounds):
        order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
        for which in order:
            rows = _child(trees[which], scale)
            if trusted:
                rows.update(_trusted_rows(_trusted(trees[which], stats)))
            runs[which].append(rows)
            print(f"round {i + 1}/{rounds}: {which} done", file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
    return {"rounds": rounds, "loadavg_1m": loads, "cpus": os.cpu_count(), "runs": runs}


def _summary(runs: list[dict[str, dict[str, float]]], row: str) -> tuple[float, float]:
    med = statistics.median(r[row]["median_us"] for r in runs)
    p99 = statistics.median(r[row]["p99_us"] for r in runs)
    return med, p99


def _print_compare(res: dict[str, Any]) -> None:
    before, after = res["runs"]["before"], res["runs"]["after"]
    print(f"before/after, {res['rounds']} interleaved rounds, {res['cpus']} CPUs, "
          f"load {' '.join(f'{x:.1f}' for x in res['loadavg_1m'])}")
    print("median = median of the per-round medians; p99 = median of the per-round p99s (µs)")
    print(f"{'':<40} {'before med':>10} {'p99':>9} {'after med':>10} {'p99':>9} {'speed-up':>8}")
    for row in before[0]:
        bm, bp = _summary(before, row)
        am, ap = _summary(after, row)
        print(f"{row:<40} {bm:10.1f} {bp:9.1f} {am:10.1f} {ap:9.1f} {bm / am:7.1f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the op counts")
    ap.add_argument("--against", metavar="DIR", type=Path,
                    help="another tree (before): alternate its figures with this tree's")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds with --against")
    ap.add_argument("--trusted", action="store_true",
                    help="with --against: also alternate bench_trusted.py stat round trips")
    ap.add_argument("--stats", type=int, default=2000,
                    help="round trips per figure of bench_trusted.py (with --trusted)")
    ap.add_argument("--show", metavar="JSON", type=Path,
                    help="print the table of a saved --against --json run")
    args = ap.parse_args(argv)
    if args.show is not None:
        _print_compare(json.loads(args.show.read_text()))
        return 0
    if args.against is not None:
        res: Any = compare(args.against, args.rounds, args.scale, args.trusted, args.stats)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            _print_compare(res)
        return 0
    sys.path.insert(0, str(HERE))
    res = measure(args.scale)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"synthfs codec micro-benchmark ({os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}), µs per op")
    for row, r in res.items():
        extra = f"   frame {r['frame_bytes']:.0f} B" if "frame_bytes" in r else ""
        print(f"  {row:<24} median {r['median_us']:10.1f}   p99 {r['p99_us']:10.1f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
