"""Throughput of the S3 backend against SeaweedFS on loopback, next to boto3 alone.

Run (a script, not a test; it starts its own SeaweedFS in a temp dir):

    .venv/bin/python benchmarks/bench_s3.py                # all of it
    .venv/bin/python benchmarks/bench_s3.py --big-mib 64 --small 200 --json

What it measures, each ``--rounds`` times (median reported):

* ``clients``: one client thread, PUT and GET of 1 KiB objects (ops/s), and a
  64 MiB object up and down (MB/s), with boto3 and, when it is installed,
  obstore (how the client was chosen).
* ``cold read``: a ``--big-mib`` object (256 MiB) read by one boto3
  ``get_object`` stream, thrown away and written into a new file (in the
  directory that holds the agent's cache: a cold fetch writes as many fresh
  page-cache pages), against a guest's read of ``/data/big`` under
  ``synthfs run --agent`` on a fresh server + agent over the bucket (cold
  cache): a Python guest's own time for its open (the fetch) and read of the
  file, 1 MiB at a time (its start-up not counted: subtracting that of
  ``synthfs run -- true``, as before, moved the figure by 2x from run to
  run); with the CPU seconds the server and the agent spent on that read
  (``/proc``), and the load average. Both sides are measured in the same run, one
  right after the other, since the load of this shared machine moves from
  minute to minute.
* ``small creates``: ``--small`` (1,000) one-byte files created by a guest
  (one Python process) through synthfs, against the same number of boto3
  ``put_object`` calls; the ratio of the two times.

Measured 2026-12-07 on the shared 2-vCPU VM, load average 11-22 (other
sessions running: every figure is noisy, the ratios more than the rates):

==================================  ===========  ===========
clients, one thread                 boto3        obstore
==================================  ===========  ===========
PUT 1 KiB (ops/s)                   175 / 47     445 / 97
GET 1 KiB (ops/s)                   317 / 65     807 / 81
64 MiB up (MB/s)                    57 / 13      68 / 15
64 MiB down (MB/s)                  238 / 44     211 / 121
==================================  ===========  ===========

(two runs each, at load ~11 and ~22). Cold read of 256 MiB: one boto3
stream 98-485 MB/s from run to run; through synthfs 34-52 MB/s before
main's faster fetch path (no better than the local backend's 40-60 MB/s then:
the limit was the server-agent data path, not the store), 108-113 MB/s after
it (load ~10). The backend alone, one 4 MiB GET per read: 138 MB/s with six
reads in flight (the agent's window), 194 MB/s with twelve; four parallel
1 MiB ranges per 4 MiB read were slower (21-58 MB/s).
At load ~4-5 (later): one boto3 stream 436-860 MB/s, synthfs 137-324 MB/s
with the agent's six reads in flight; raising it to twelve (and the S3
server's --workers to 24, so that one agent may have twelve served at once)
gave 105-262 MB/s: no gain above the noise, so the window stays at six. The
gap is the server-to-agent path (two more copies of every byte and a
4 MiB GET per read), not the number of reads in flight.
(Later, #13/#14 fetch work: the fetch alone, with the CPU of the server, the
agent and the store, and boto3 into a file beside it, is
``bench_fetch.py --s3``; ``benchmarks/RESULTS.md`` has its figures.)
Later still (one signed ranged GET per chunk, boto3 into a file measured beside it,
load 10-11): the guest's cold read 110 and 87 MB/s against boto3 277 / 280 MB/s
thrown away and 220 / 214 MB/s into a file (RESULTS.md, issue #14's section).
With direct fetches (the agent reads the store on a presigned URL, load 3-3.8):
293-424 MB/s against boto3 503-611 thrown away and 429-540 into a file, the
server's CPU 0.02 s (RESULTS.md, "S3 direct fetches"). With each body spliced
into the copy (no copy through the agent), four A/B pairs at load 7-18: synthfs
119-241 MB/s against boto3 142-381 thrown away and 96-267 into a file (medians;
ratios 0.74-0.91 and 0.88-1.21), the tree before 136-185 (0.50-0.88 and
0.68-1.57): at that load noise; the agent's CPU 0.19-0.24 s against 0.19-0.56 s
(RESULTS.md, "direct fetches splice"). With no second Stat at a cold open and
ranges of up to 32 MiB, 6 alternated rounds at load 2.3-2.9: 407 against 297 MB/s
before, boto3 507 (ratios 0.88 and 0.64; RESULTS.md, "no second Stat").
1,000 creates: 6.8x the time of 1,000 boto3 puts (18x before lookups were
answered from memory for 1 s and made with one round trip); a create costs
four store round trips (the agent's lookup, the exclusive create, the
content's commit) against one PUT. Later (load ~14-17): 6.9x (198.6 s against
28.8 s) before, 4.7x (106.9 s against 23.0 s) after the HEADs went through
``server/backends/s3head.py``, the exclusive create lost its HEAD and the
news of a commit its stat: 3.2 HEADs, 2.1 listings and 2 PUTs a create
(5.3 HEADs before).
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
from pathlib import Path
from typing import Any

__all__ = ["main"]

MB = 1_000_000


def _synthfs() -> list[str]:
    return [str(Path(sys.executable).parent / "synthfs")]


def _timed_run(agent: str, argv: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run([*_synthfs(), "run", "--agent", agent, "--", *argv],
                       capture_output=True, check=False)
    took = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"guest failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    return took


def clients(store: Any, bucket: str, n: int = 200) -> dict[str, float]:
    out: dict[str, float] = {}
    s3 = store.client()
    small, big = os.urandom(1024), os.urandom(64 << 20)

    def rate(f: Any) -> float:
        t = time.perf_counter()
        for i in range(n):
            f(i)
        return n / (time.perf_counter() - t)

    def mbs(f: Any) -> float:
        t = time.perf_counter()
        f()
        return len(big) / MB / (time.perf_counter() - t)

    out["boto3 PUT 1KiB /s"] = rate(lambda i: s3.put_object(Bucket=bucket, Key=f"c/b{i}",
                                                             Body=small))
    out["boto3 GET 1KiB /s"] = rate(
        lambda i: s3.get_object(Bucket=bucket, Key=f"c/b{i}")["Body"].read())
    out["boto3 64MiB up MB/s"] = mbs(lambda: s3.put_object(Bucket=bucket, Key="c/big",
                                                           Body=big))
    out["boto3 64MiB down MB/s"] = mbs(
        lambda: s3.get_object(Bucket=bucket, Key="c/big")["Body"].read())
    try:
        import obstore
        from obstore.store import S3Store
    except ImportError:
        return out
    env = store.env()
    ob = S3Store(bucket, endpoint=store.endpoint, access_key_id=env["AWS_ACCESS_KEY_ID"],
                 secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                 client_options={"allow_http": True}, virtual_hosted_style_request=False)
    out["obstore PUT 1KiB /s"] = rate(lambda i: obstore.put(ob, f"c/o{i}", small))
    out["obstore GET 1KiB /s"] = rate(lambda i: obstore.get(ob, f"c/o{i}").bytes())
    out["obstore 64MiB up MB/s"] = mbs(lambda: obstore.put(ob, "c/obig", big))
    out["obstore 64MiB down MB/s"] = mbs(lambda: obstore.get(ob, "c/obig").bytes())
    return out


def _cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


#: The guest of the cold read: it times its own open and read of the file (the fetch is
#: made at the open), so its start-up under ``synthfs run`` is not counted.
_GUEST_READ = """
import time
t = time.perf_counter()
n = 0
with open("/data/big", "rb", buffering=0) as f:
    while chunk := f.read(1 << 20):
        n += len(chunk)
print(n, time.perf_counter() - t)
"""


def cold_read(store: Any, bucket: str, big_mib: int) -> dict[str, float]:
    from synthfs.testing.s3stack import s3_stack

    s3 = store.client()
    size = big_mib << 20
    prefix = f"cold{time.time_ns()}"
    with tempfile.TemporaryFile() as f:
        block = os.urandom(1 << 20)
        for _ in range(big_mib):
            f.write(block)
        f.seek(0)
        s3.upload_fileobj(f, bucket, f"{prefix}/big")
    key = f"{prefix}/big"
    with s3_stack(store.endpoint, bucket, prefix, store.env()) as stack:
        base = _timed_run(stack.agent_endpoint, ["true"])
        t = time.perf_counter()
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        got = 0
        while chunk := body.read(1 << 20):
            got += len(chunk)
        stream = time.perf_counter() - t
        assert got == size
        dst = os.path.join(stack.workdir, "boto3.bin")  # beside the agent's cache
        time.sleep(3)  # fresh pages, as the synthfs read's below (the upload freed 256 MiB)
        t = time.perf_counter()
        with open(dst, "wb") as out:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            while chunk := body.read(1 << 20):
                out.write(chunk)
        to_file = time.perf_counter() - t
        os.unlink(dst)
        time.sleep(3)  # this VM takes freed pages back after ~2 s: both sides fill fresh ones
        s0, a0 = _cpu(stack.server_pid), _cpu(stack.agent_pid)
        p = subprocess.run([*_synthfs(), "run", "--agent", stack.agent_endpoint, "--",
                            sys.executable, "-c", _GUEST_READ], capture_output=True,
                           check=False)
        if p.returncode:
            raise SystemExit(f"guest failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
        server_cpu, agent_cpu = _cpu(stack.server_pid) - s0, _cpu(stack.agent_pid) - a0
        got_s, read = p.stdout.split()
        assert int(got_s) == size, got_s
    synthfs = size / MB / float(read)
    return {"boto3 single stream MB/s": size / MB / stream,
            "boto3 single stream to a file MB/s": size / MB / to_file,
            "synthfs cold read MB/s": synthfs,
            "synthfs / boto3 stream": synthfs / (size / MB / stream),
            "synthfs / boto3 to a file": synthfs / (size / MB / to_file),
            "synthfs server CPU s": server_cpu, "synthfs agent CPU s": agent_cpu,
            "synthfs run -- true s": base, "load average": os.getloadavg()[0]}


def small_creates(store: Any, bucket: str, n: int) -> dict[str, float]:
    from synthfs.testing.s3stack import s3_stack

    s3 = store.client()
    t = time.perf_counter()
    for i in range(n):
        s3.put_object(Bucket=bucket, Key=f"direct{n}/{i}", Body=b"x")
    direct = time.perf_counter() - t
    prefix = f"small{time.time_ns()}"
    script = (f"import os\nos.mkdir('/data/s')\nfor i in range({n}):\n"
              "    with open(f'/data/s/{i}', 'x') as f: f.write('x')\n")
    with s3_stack(store.endpoint, bucket, prefix, store.env()) as stack:
        base = _timed_run(stack.agent_endpoint, [sys.executable, "-c", "pass"])
        took = _timed_run(stack.agent_endpoint, [sys.executable, "-c", script]) - base
    listed = sum(len(p.get("Contents", [])) for p in s3.get_paginator("list_objects_v2")
                 .paginate(Bucket=bucket, Prefix=f"{prefix}/s/"))
    assert listed >= n, listed
    return {"boto3 puts s": direct, "synthfs creates s": took,
            "synthfs / boto3": took / direct}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", choices=["clients", "cold", "small"], default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from synthfs.testing.seaweed import Seaweed

    results: dict[str, list[float]] = {}
    with Seaweed() as store:
        bucket = store.new_bucket("bench")
        for _ in range(args.rounds):
            got: dict[str, float] = {}
            if args.only in (None, "clients"):
                got |= clients(store, bucket)
            if args.only in (None, "cold"):
                got |= cold_read(store, bucket, args.big_mib)
            if args.only in (None, "small"):
                got |= small_creates(store, bucket, args.small)
            for k, v in got.items():
                results.setdefault(k, []).append(v)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for k, vs in results.items():
            print(f"{k:32s} {statistics.median(vs):10.2f}   ({', '.join(f'{v:.2f}' for v in vs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
