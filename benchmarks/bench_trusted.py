"""Benchmark of the trusted side: stat latency through agent -> server, and cold fill.

Run (a script, not a test; it takes about a minute and writes a 256 MiB file):

    .venv/bin/python benchmarks/bench_trusted.py [--size-mib 256] [--json]

What it measures, all in one run on one machine:

* ``stat``: round trip of a ``Stat`` from a client playing the interposer,
  through the agent (attribute cache off: ``--attr-ttl 0``) to the server and
  back (two hops), with the agent -> server link over ``ipc://`` and over
  ``tcp://127.0.0.1``. For scale, also: the agent alone answering from its
  attribute cache (one hop), the server alone (one hop, the agent's client),
  and a bare ZeroMQ DEALER/ROUTER echo of the same size (the floor of one hop
  on this machine).
* ``fill``: cold fill of a ``--size-mib`` file into the agent's cache (one
  ``Open`` that fetches it: pipelined ranged Reads), in MB/s, against
  ``cat file > /dev/null`` of the same file in the same run. The server's
  file is in the page cache for both (the cat runs first and warms it).
* ``warm open``: an ``Open`` of an unchanged cached file right after its fill
  (the embedded agent follows invalidations: no round trip once promised).
* ``promises``: ``Open`` (and ``Stat``, attribute TTL 0) of an unchanged cached
  file through two agents of one server (``--publish``), measured interleaved
  in the same run: one follows the invalidations (``--subscribe``: callback
  promises, no round trip), the other does not (one revalidation Stat each).
* ``startup``: time for ``agent.embedded.embedded()`` to have both processes ready.

Targets (issue 2): <= 150 us per stat round trip (two hops), >= 300 MB/s cold fill.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq

from synthfs.agent.embedded import embedded
from synthfs.agent.upstream import Upstream
from synthfs.protocol.client import Client
from synthfs.protocol.messages import Open, Opened, Stat, StatReply

__all__ = ["main"]

MIB = 1024 * 1024


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_us": statistics.median(s) * 1e6,
        "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6,
        "n": len(s),
    }


def _time_calls(fn: object, n: int, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        fn()  # type: ignore[operator]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
    return _percentiles(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ECHO = """
import sys, zmq
s = zmq.Context().socket(zmq.ROUTER); s.bind(sys.argv[1])
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    s.send_multipart(s.recv_multipart())
"""


def _cpu_per_call(fn: object, n: int) -> float:
    """This process's CPU time per call, in µs (independent of wake-up latency)."""
    t = time.process_time()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.process_time() - t) / n * 1e6


def bare_zmq_echo(endpoint: str, n: int) -> dict[str, object]:
    """The floor of one hop, and protocol.client.Client against the same echo peer.

    The echo peer sends each frame back unchanged, so a ``Stat`` comes back
    as a valid reply with the right request id: Client.call's full path
    (encode, send, poll, receive, decode) against raw send/recv of bytes.
    """
    p = subprocess.Popen([sys.executable, "-c", _ECHO, endpoint], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        ctx = zmq.Context.instance()
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(endpoint)
        payload = b"x" * 40

        def raw() -> None:
            d.send(payload)
            d.recv()

        out: dict[str, object] = {"raw": _time_calls(raw, n)}
        out["raw_cpu_us"] = _cpu_per_call(raw, n)
        d.close()
        with Client(endpoint, timeout=10) as c:
            msg = Stat(path="/some/small/path")

            def client() -> None:
                c.call(msg)

            out["client"] = _time_calls(client, n)
            out["client_cpu_us"] = _cpu_per_call(client, n)
        return out
    finally:
        p.kill()
        p.wait()


def stat_latency(data: Path, cache: Path, server_listen: str | None, n: int) -> dict[str, object]:
    out: dict[str, object] = {}
    with embedded(data, cache_dir=cache, attr_ttl=0, server_listen=server_listen) as s, \
            Client(s.agent_endpoint, timeout=10) as c:

        def two_hops() -> None:
            r = c.call(Stat(path="/small"))
            assert isinstance(r, StatReply)

        out["two_hops"] = _time_calls(two_hops, n)
    out["server_only"] = server_only_latency(data, cache.parent, server_listen, n)
    return out


def server_only_latency(data: Path, work: Path, listen: str | None, n: int) -> dict[str, float]:
    """One hop: the agent's upstream client straight to a server of our own."""
    run = Path(tempfile.mkdtemp(dir=work, prefix="srv-"))
    key = run / "bootstrap.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_hex(32).encode())
    os.close(fd)
    endpoint = listen or f"ipc://{run}/server.sock"
    r, w = os.pipe()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    p = subprocess.Popen([sys.executable, "-m", "synthfs.server", "--root", str(data), "--listen",
                          endpoint, "--bootstrap-key", str(key), "--ready-fd", str(w)],
                         pass_fds=(w,), env=env, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        assert os.read(r, 16).startswith(b"ready"), "server did not start"
        up = Upstream(endpoint, key.read_bytes().strip(), timeout=10)
        up.register()
        res = _time_calls(lambda: up.call(Stat(path="/small"), StatReply), n)
        up.close()
        return res
    finally:
        os.close(r)
        p.terminate()
        p.wait()


def agent_only_latency(data: Path, cache: Path, n: int) -> dict[str, float]:
    """One hop: the agent answers Stat from its attribute cache (TTL 1 s, kept warm)."""
    with embedded(data, cache_dir=cache, attr_ttl=1) as s, Client(s.agent_endpoint) as c:
        samples = []
        for i in range(n + 200):
            t = time.perf_counter()
            c.call(Stat(path="/small"))
            if i >= 200:
                samples.append(time.perf_counter() - t)
        return _percentiles(samples)  # includes the ~1 upstream refresh per second


def _spawn_ready(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    r, w = os.pipe()
    p = subprocess.Popen([*argv, "--ready-fd", str(w)], pass_fds=(w,), env=env,
                         stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        assert os.read(r, 16).startswith(b"ready"), f"{argv[2]} did not start"
    finally:
        os.close(r)
    return p


def promise_latency(data: Path, work: Path, n: int) -> dict[str, object]:
    """Open/Stat through an agent with callback promises and one without, interleaved."""
    run = Path(tempfile.mkdtemp(dir=work, prefix="cb-"))
    key = run / "bootstrap.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_hex(32).encode())
    os.close(fd)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    server_ep, pub_ep = f"ipc://{run}/server.sock", f"ipc://{run}/pub.sock"
    procs = [_spawn_ready([sys.executable, "-m", "synthfs.server", "--root", str(data), "--listen",
                           server_ep, "--bootstrap-key", str(key), "--publish", pub_ep], env)]
    clients: dict[str, Client] = {}
    try:
        for name, extra in (("promised", ["--subscribe", pub_ep]), ("revalidated", [])):
            procs.append(_spawn_ready(
                [sys.executable, "-m", "synthfs.agent", "--server", server_ep, "--bootstrap-key",
                 str(key), "--listen", f"ipc://{run}/{name}.sock", "--cache",
                 str(run / f"cache-{name}"), "--attr-ttl", "0", *extra], env))
            clients[name] = Client(f"ipc://{run}/{name}.sock", timeout=10)
        for c in clients.values():
            c.call(Open(path="/small", flags=os.O_RDONLY))
        time.sleep(1.0)  # a beat has arrived: the promised agent's next Stat holds a promise
        samples: dict[str, list[float]] = {f"{k}_{op}": [] for k in clients
                                           for op in ("open", "stat")}
        msgs = {"open": Open(path="/small", flags=os.O_RDONLY), "stat": Stat(path="/small")}
        for block in range(max(1, n // 100) + 2):
            for name, c in clients.items():
                for op, msg in msgs.items():
                    for _ in range(100):
                        t = time.perf_counter()
                        c.call(msg)
                        if block >= 2:  # two warm-up blocks
                            samples[f"{name}_{op}"].append(time.perf_counter() - t)
        return {k: _percentiles(v) for k, v in samples.items()}
    finally:
        for c in clients.values():
            c.close()
        for p in reversed(procs):
            p.terminate()
            p.wait()


def startup(data: Path, work: Path, runs: int) -> list[float]:
    """Seconds from entering embedded() to both processes ready (warm cache dir)."""
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        with embedded(data, cache_dir=work / "start-cache"):
            out.append(time.perf_counter() - t)
    return out


def cat_throughput(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(f"cat {path} > /dev/null", shell=True, check=True)
    return path.stat().st_size / (time.perf_counter() - t) / 1e6


def fill_throughput(data: Path, work: Path, runs: int) -> dict[str, object]:
    big = data / "big"
    size = big.stat().st_size
    fills = []
    warm = []
    for i in range(runs):
        cache = work / f"fill-cache-{i}"
        with embedded(data, cache_dir=cache) as s, Client(s.agent_endpoint, timeout=120) as c:
            t = time.perf_counter()
            o = c.call(Open(path="/big", flags=os.O_RDONLY))
            dt = time.perf_counter() - t
            assert isinstance(o, Opened) and os.path.getsize(o.host_path) == size
            fills.append(size / dt / 1e6)
            for _ in range(50):
                t = time.perf_counter()
                c.call(Open(path="/big", flags=os.O_RDONLY))
                warm.append(time.perf_counter() - t)
        shutil.rmtree(cache, ignore_errors=True)
    return {"fill_MBps": fills, "fill_MBps_median": statistics.median(fills),
            "warm_open": _percentiles(warm)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--stats", type=int, default=2000, help="round trips per latency figure")
    ap.add_argument("--fills", type=int, default=3, help="cold fills (median reported)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="synthfs-bench-"))
    try:
        data = work / "data"
        data.mkdir()
        (data / "small").write_bytes(b"x" * 100)
        with open(data / "big", "wb") as f:
            chunk = os.urandom(4 * MIB)
            for _ in range(args.size_mib // 4):
                f.write(chunk)
        load = os.getloadavg()[0]
        res: dict[str, object] = {"cpus": os.cpu_count(), "loadavg_1m_start": load}
        res["zmq_echo_ipc"] = bare_zmq_echo(f"ipc://{work}/echo.sock", args.stats)
        res["zmq_echo_tcp"] = bare_zmq_echo(f"tcp://127.0.0.1:{_free_port()}", args.stats)
        res["stat_ipc"] = stat_latency(data, work / "c1", None, args.stats)
        res["stat_tcp"] = stat_latency(data, work / "c2", f"tcp://127.0.0.1:{_free_port()}",
                                       args.stats)
        res["agent_attr_cache_hit"] = agent_only_latency(data, work / "c3", args.stats)
        res["promises"] = promise_latency(data, work, args.stats)
        res["startup_s"] = startup(data, work, 5)
        cat = [cat_throughput(data / "big") for _ in range(3)]
        res["cat_MBps"] = cat
        res["cat_MBps_median"] = statistics.median(cat)
        res["fill"] = fill_throughput(data, work, args.fills)
        res["loadavg_1m_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    _report(res, args.size_mib)
    return 0


def _report(res: dict[str, object], size_mib: int) -> None:
    def lat(name: str, r: object) -> None:
        assert isinstance(r, dict)
        print(f"  {name:<44} median {r['median_us']:7.0f} us   p99 {r['p99_us']:7.0f} us")

    print(f"synthfs trusted-side benchmark ({res['cpus']} CPUs, load "
          f"{res['loadavg_1m_start']:.1f} -> {res['loadavg_1m_end']:.1f})")
    print("stat round trip (interposer -> agent -> server, attr cache off), target <= 150 us:")
    for link in ("ipc", "tcp"):
        r = res[f"stat_{link}"]
        assert isinstance(r, dict)
        lat(f"two hops, agent->server over {link}", r["two_hops"])
        lat(f"  server alone over {link} (one hop)", r["server_only"])
    lat("agent alone, attr cache hit (one hop)", res["agent_attr_cache_hit"])
    cb = res["promises"]
    assert isinstance(cb, dict)
    print("warm Open / Stat (attr TTL 0) of a cached file, same run, interleaved:")
    lat("Open, revalidated (one Stat upstream)", cb["revalidated_open"])
    lat("Open, callback promise (no round trip)", cb["promised_open"])
    lat("Stat, upstream", cb["revalidated_stat"])
    lat("Stat, callback promise (no round trip)", cb["promised_stat"])
    for link in ("ipc", "tcp"):
        echo = res[f"zmq_echo_{link}"]
        assert isinstance(echo, dict)
        lat(f"bare ZeroMQ echo over {link} (floor of a hop)", echo["raw"])
        lat(f"  Client.call(Stat) on that echo over {link}", echo["client"])
        print(f"  {'':<44} CPU per call: raw {echo['raw_cpu_us']:.0f} us, "
              f"Client {echo['client_cpu_us']:.0f} us")
    starts = res["startup_s"]
    assert isinstance(starts, list)
    print(f"embedded() ready (server + agent started in parallel), target < 0.3 s: median "
          f"{statistics.median(starts):.3f} s   runs " + ", ".join(f"{x:.3f}" for x in starts))
    fill = res["fill"]
    assert isinstance(fill, dict)
    print(f"cold fill of {size_mib} MiB into the agent cache, target >= 300 MB/s:")
    print(f"  agent fill   median {fill['fill_MBps_median']:7.0f} MB/s   runs "
          + ", ".join(f"{x:.0f}" for x in fill["fill_MBps"]))
    print(f"  cat > /dev/null median {res['cat_MBps_median']:7.0f} MB/s   runs "
          + ", ".join(f"{x:.0f}" for x in res["cat_MBps"]))  # type: ignore[union-attr]
    lat("warm Open (embedded: on a callback promise)", fill["warm_open"])


if __name__ == "__main__":
    sys.exit(main())
