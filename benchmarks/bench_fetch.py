"""Benchmark of cold reads: the agent's fetch rate, ``head -c 1`` and ``cat`` of a cold file.

Run (a script, not a test; real server and agent processes):

    .venv/bin/python benchmarks/bench_fetch.py                  # 512 MiB, local, 3 rounds
    .venv/bin/python benchmarks/bench_fetch.py --size-mib 128 --rounds 1 --json
    .venv/bin/python benchmarks/bench_fetch.py --s3 --size-mib 256 --fetch-only

What it measures, each round on a file the agent has never seen (the file is
renamed on the server, or for ``--s3`` a new object is written: a change made
behind the server's back is not seen while the agent holds a callback promise,
so a new mtime alone would not make the next open fetch):

* ``fetch`` (alone with ``--fetch-only``): one ``Open`` sent straight to the
  agent's socket, timed from send to reply: the whole cold fetch (Stat, Reads,
  writes into the cache, install), as MB/s (10^6 bytes); with the CPU seconds
  the server, the agent (and the store, with ``--s3``) spent on it (from
  ``/proc/PID/stat``), which the machine's load disturbs less;
* the floor of this machine for writing as many bytes into a new file: ``dd``
  of ``/dev/zero`` (4 MiB blocks) into a new file of the same size, right after
  the fetch (a cold fetch writes that many fresh page-cache pages; on a VM whose
  host backs guest memory lazily, that costs more than any copy of the data);
* ``--s3``: the same object read by one boto3 ``get_object`` stream, thrown
  away (``boto3_stream``) and written into a new file (``boto3_to_file``,
  ``--settle`` seconds after the last large free, with the CPU seconds of this
  process and of the store: the figures to set beside the fetch's);
* ``head``: ``synthfs run --agent EP -- head -c 1 /data/FILE``, less the
  same run of ``true`` (start-up excluded) (local only);
* ``cat`` (the harness's W1c): ``synthfs run --agent EP -- cat /data/FILE``
  to ``/dev/null``, less ``true``, divided by a native ``cat`` of the served file
  (local only).

Each fetch starts ``--settle`` seconds (3) after the round's last large free
(the previous round's ``dd``, the renamed or uploaded file): this VM returns
freed memory to its host after ~2 s (free page reporting), and a fetch right
after a large free reuses those warm pages instead of faulting fresh ones in
(``--settle 0`` measures that case; at load ~8 here, 0.9-1.3 s against 3-4.5 s
for 512 MiB, the agent's CPU 0.3 s against 1.3 s).

The tree measured is the one this script's ``synthfs`` is imported from: to
compare with another commit, run the other tree's copy of this script with its
own virtualenv (or ``PYTHONPATH=DIR``) and the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["main"]

MB = 1_000_000


def _cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children (threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _group_cpu(pgid: int) -> float:
    """CPU seconds of every process in the process group ``pgid`` (the store)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    total += sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                continue
    return total


def _run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _dd(directory: str, size_mib: int) -> float:
    """Seconds to write ``size_mib`` MiB of zeros into a new file (then removed)."""
    path = os.path.join(directory, "dd.bin")
    took = _run(["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={size_mib // 4}",
                 "status=none"])
    os.unlink(path)
    return took


def _write_random(path: str, size_mib: int) -> None:
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size_mib):
            f.write(block)


@contextlib.contextmanager
def _local(tmp: str, size_mib: int) -> Iterator[tuple[Any, Callable[[int], str], str, int]]:
    """(stack, new cold file for round i -> its /data path, served directory, store pgid)."""
    from synthfs.agent.embedded import embedded

    data = os.path.join(tmp, "data")
    os.mkdir(data)
    current = os.path.join(data, "big.bin")
    _write_random(current, size_mib)

    def cold(i: int) -> str:
        nonlocal current
        new = os.path.join(data, f"big{i}.bin")
        os.rename(current, new)  # a name the agent never saw: its open fetches
        current = new
        return "/" + os.path.basename(new)

    port = 20000 + os.getpid() % 20000
    with embedded(data, cache_dir=os.path.join(tmp, "cache"), cache_size=4 * (size_mib << 20),
                  server_listen=f"tcp://127.0.0.1:{port}") as stack:
        yield stack, cold, data, 0


@contextlib.contextmanager
def _s3(tmp: str, size_mib: int, out: dict[str, list[float]], settle: float,
        agent_args: tuple[str, ...] = ()) -> Iterator[tuple[Any, Callable[[int], str], str, int]]:
    """As :func:`_local` over SeaweedFS; each round also reads the object with boto3."""
    from synthfs.testing.s3stack import s3_stack
    from synthfs.testing.seaweed import Seaweed

    src = os.path.join(tmp, "src.bin")
    _write_random(src, size_mib)
    with Seaweed(os.path.join(tmp, "weed")) as store:
        bucket = store.new_bucket("fetch")
        s3 = store.client()
        assert store.proc is not None
        pgid = os.getpgid(store.proc.pid)

        def cold(i: int) -> str:
            key = f"p/big{i}"
            s3.upload_file(src, bucket, key)
            t = time.perf_counter()
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            while body.read(1 << 20):
                pass
            out["boto3_stream_mbps"].append((size_mib << 20) / MB / (time.perf_counter() - t))
            dst = os.path.join(tmp, "boto3.bin")
            time.sleep(settle)  # fresh pages, as the fetch's (see the module doc)
            w0, c0 = _group_cpu(pgid), time.process_time()
            t = time.perf_counter()
            with open(dst, "wb") as f:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                while chunk := body.read(1 << 20):
                    f.write(chunk)
            out["boto3_to_file_mbps"].append((size_mib << 20) / MB / (time.perf_counter() - t))
            out["boto3_to_file_cpu_s"].append(time.process_time() - c0)
            out["boto3_store_cpu_s"].append(_group_cpu(pgid) - w0)
            os.unlink(dst)
            return f"/big{i}"

        with s3_stack(store.endpoint, bucket, "p", store.env(), agent_args=agent_args) as stack:
            yield stack, cold, "", pgid


def measure(size_mib: int, rounds: int, fetch_only: bool = False,
            s3: bool = False, settle: float = 3.0,
            agent_args: tuple[str, ...] = ()) -> dict[str, Any]:
    from synthfs.protocol.client import Client
    from synthfs.protocol.messages import Open, Opened

    out: dict[str, list[float]] = {k: [] for k in (
        "fetch_s", "fetch_mbps", "server_cpu_s", "agent_cpu_s", "store_cpu_s", "dd_mbps",
        "boto3_stream_mbps", "boto3_to_file_mbps", "boto3_to_file_cpu_s",
        "boto3_store_cpu_s", "head_s", "true_s", "cat_s",
        "native_cat_s")}
    synthfs = [sys.executable, "-m", "synthfs", "run"]
    size = size_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        ctx = _s3(tmp, size_mib, out, settle, agent_args) if s3 else _local(tmp, size_mib)
        with ctx as (stack, cold, data, pgid):
            run = [*synthfs, "--agent", stack.agent_endpoint, "--"]
            client = Client(stack.agent_endpoint, timeout=600)
            for i in range(rounds):
                path = cold(3 * i)
                time.sleep(settle)
                s0, a0 = _cpu(stack.server_pid), _cpu(stack.agent_pid)
                w0 = _group_cpu(pgid) if pgid else 0.0
                t0 = time.perf_counter()
                reply = client.call(Open(path=path, flags=os.O_RDONLY))
                dt = time.perf_counter() - t0
                assert isinstance(reply, Opened), reply
                out["fetch_s"].append(dt)
                out["fetch_mbps"].append(size / dt / MB)
                out["server_cpu_s"].append(_cpu(stack.server_pid) - s0)
                out["agent_cpu_s"].append(_cpu(stack.agent_pid) - a0)
                if pgid:
                    out["store_cpu_s"].append(_group_cpu(pgid) - w0)
                # after the fetch: before it, the pages it freed would serve the fetch
                out["dd_mbps"].append(size / MB / _dd(tmp, size_mib))
                if fetch_only or s3:
                    continue
                out["true_s"].append(_run([*run, "true"]))
                path = cold(3 * i + 1)
                out["head_s"].append(_run([*run, "head", "-c", "1", f"/data{path}"]))
                path = cold(3 * i + 2)
                out["cat_s"].append(_run([*run, "cat", f"/data{path}"]))
                out["native_cat_s"].append(_run(["cat", os.path.join(data, path[1:])]))
            client.close()
    med = {k: statistics.median(v) for k, v in out.items() if v}
    if "head_s" in med:
        med["head_less_startup_s"] = med["head_s"] - med["true_s"]
        med["w1c_ratio"] = (med["cat_s"] - med["true_s"]) / med["native_cat_s"]
    return {"size_mib": size_mib, "rounds": rounds, "backend": "s3" if s3 else "local",
            "settle_s": settle,
            "median": med, "all": {k: v for k, v in out.items() if v},
            "load": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fetch-only", action="store_true", help="only the Open to the agent")
    p.add_argument("--s3", action="store_true", help="over SeaweedFS (started here)")
    p.add_argument("--settle", type=float, default=3.0, metavar="S",
                   help="seconds to wait before each fetch (default 3: see the module doc)")
    p.add_argument("--no-direct", action="store_true",
                   help="--s3: the agent fetches through the server (agent --no-direct)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.size_mib < 4 or args.size_mib % 4:
        p.error("--size-mib must be a multiple of 4")
    r = measure(args.size_mib, args.rounds, args.fetch_only, args.s3, args.settle,
                ("--no-direct",) if args.no_direct else ())
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    m, a = r["median"], r["all"]
    print(f"{args.size_mib} MiB, {r['backend']}, {args.rounds} rounds, {args.settle:g} s "
          f"settle, load {r['load'][0]:.1f} (medians; every round in brackets)")

    def each(key: str) -> str:
        return ", ".join(f"{v:.0f}" for v in a[key])

    print(f"  cold fetch (Open to the agent): {m['fetch_s']:.3f} s = {m['fetch_mbps']:.0f} MB/s"
          f" [{each('fetch_mbps')}]; CPU server {m['server_cpu_s']:.2f} s, agent "
          f"{m['agent_cpu_s']:.2f} s" + (f", store {m['store_cpu_s']:.2f} s"
                                         if "store_cpu_s" in m else ""))
    print(f"  dd into a new file (this machine's floor): {m['dd_mbps']:.0f} MB/s "
          f"[{each('dd_mbps')}]")
    if args.s3:
        print(f"  boto3, one stream: {m['boto3_stream_mbps']:.0f} MB/s thrown away "
              f"[{each('boto3_stream_mbps')}], {m['boto3_to_file_mbps']:.0f} MB/s into a "
              f"new file [{each('boto3_to_file_mbps')}]; CPU of the boto3 process "
              f"{m['boto3_to_file_cpu_s']:.2f} s, store {m['boto3_store_cpu_s']:.2f} s (into "
              "the file)")
    if "head_s" not in m:
        return 0
    print(f"  head -c 1, cold: {m['head_s']:.3f} s ({m['head_less_startup_s']:.3f} s without "
          f"start-up; true: {m['true_s']:.3f} s)")
    print(f"  cat, cold (W1c): {m['cat_s']:.3f} s, native {m['native_cat_s']:.3f} s: "
          f"{m['w1c_ratio']:.2f}x without start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
