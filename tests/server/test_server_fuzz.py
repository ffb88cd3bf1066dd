"""Hostile input at a running server: every frame answered, the server still serving.

Two fuzzers. The Hypothesis one (1,000 frames) builds structured frames:
raw random bytes, msgpack arrays that look like envelopes but carry wrong
types, unknown kinds and fields, random multipart shapes, and well-formed
requests with a valid token and odd arguments (so the backend sees hostile
paths and values too). The socket-speed one (:mod:`fuzzframes`) mutates
precomputed frames: ``SYNTHFS_FUZZ_FRAMES`` of them in CI (20,000), a million
in the slow run, with a valid Stat after every 200 that must be answered.
The server owes a reply to every frame (an error for a bad one).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import attrs
import msgpack
import pytest
import zmq
from fuzzframes import CI_FRAMES, FULL_FRAMES, SEED, FrameFuzzer, blast, server_seeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import RawClient, ServerProc, make_key, register

from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    REGISTRY,
    Message,
    Registered,
    Stat,
    StatReply,
)

KINDS = sorted(REGISTRY)
FIELDS = sorted({f.name for cls in REGISTRY.values() for f in attrs.fields(cls)})
PATHS = ["/", "/a", "/a/b", "/d", "/d/f", "../x", "/..", "/.synthfs-staging", "", "/\x00",
         "//", "/" + "x" * 300, "/a/" * 2000]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(), st.text(max_size=20), st.binary(max_size=20), st.sampled_from(PATHS),
)
#: Shallow on purpose: deep recursive strategies cost Hypothesis tens of ms per example.
values = st.one_of(scalars, st.lists(scalars, max_size=4),
                   st.dictionaries(st.text(max_size=6), scalars, max_size=3))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    root = tmp / "repo"
    root.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"data")
    key = make_key(tmp / "k")
    sockdir = tempfile.mkdtemp(prefix="sfs-", dir="/tmp")
    proc = ServerProc(root, tmp / "k", f"ipc://{sockdir}/s.sock").start()
    client = RawClient(proc.bound)
    register(client, key)
    yield proc, client
    client.close()
    proc.stop()
    shutil.rmtree(sockdir, ignore_errors=True)


def _drain(client: RawClient) -> int:
    n = 0
    while True:
        try:
            client.sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return n
        n += 1


def _pack(envelope) -> list[bytes]:
    return [msgpack.packb(list(envelope), use_bin_type=True)]


#: Plausible values per field name, for requests that pass the codec and reach the backend.
FIELD_VALUES = {
    "path": st.sampled_from(PATHS), "src": st.sampled_from(PATHS), "dst": st.sampled_from(PATHS),
    "target": st.sampled_from(PATHS), "offset": st.integers(0, 2**20),
    "length": st.integers(0, 2**16), "size": st.integers(0, 2**16),
    "mode": st.integers(0, 0o7777), "data": st.binary(max_size=64),
    "upload_id": st.sampled_from(["u1", "u2", ""]), "flags": st.integers(0, 3),
    "directory": st.booleans(), "version": st.sampled_from(["", "1-2-3-4"]),
    "atime_ns": st.none() | st.integers(-(2**63), 2**63 - 1),
    "mtime_ns": st.none() | st.integers(-(2**63), 2**63 - 1),
}
SERVER_KINDS = ["stat", "list", "read", "readlink", "upload_chunk", "upload_commit",
                "upload_abort", "mkdir", "remove", "rename", "symlink", "setattr"]


def frames(token: str):
    """One request's frames: garbage, wrong shapes, wrong types, or odd but valid requests."""
    version = st.just(1) | scalars
    kind = st.sampled_from(KINDS) | st.text(max_size=10)
    rid = st.integers(0, 2**64 - 1) | scalars
    tok = st.sampled_from([token, ""]) | scalars
    body = st.dictionaries(st.sampled_from(FIELDS), values, max_size=4)
    requests = st.sampled_from(SERVER_KINDS).flatmap(
        lambda k: st.fixed_dictionaries(
            {f.name: FIELD_VALUES.get(f.name, values) for f in attrs.fields(REGISTRY[k])}
        ).map(lambda b, k=k: _pack([1, k, 1, token, b]))
    )
    return st.one_of(
        st.binary(max_size=300).map(lambda b: [b]),
        st.lists(st.binary(max_size=50), min_size=1, max_size=4),
        values.map(lambda v: [msgpack.packb(v, use_bin_type=True)]),
        st.tuples(version, kind, rid, tok, body).map(_pack),
        st.tuples(version, kind, rid, tok, values).map(_pack),
        requests,
    )


def test_random_frames_never_break_the_server(fuzz_server):
    proc, client = fuzz_server
    sent = 0

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frames(client.token))
    def send_one(parts):
        nonlocal sent
        client.sock.send_multipart(parts)
        sent += 1
        if sent % 50 == 0:
            _drain(client)

    started = time.monotonic()
    send_one()
    assert sent >= 1000
    assert proc.alive(), proc.output()
    rid = client.send(Stat(path="/"))  # the root: random requests cannot remove it
    deadline = time.monotonic() + 20
    while True:
        got, reply = client.recv(timeout=max(0.1, deadline - time.monotonic()))
        if got == rid:
            break
    assert isinstance(reply, StatReply) and reply.attrs.kind == "dir"
    assert proc.alive()
    assert time.monotonic() - started < 60


def test_bad_frames_get_an_error_reply(fuzz_server):
    import errno

    from synthfs.protocol.codec import decode
    from synthfs.protocol.messages import Error

    _proc, client = fuzz_server
    _drain(client)

    def reply_to(parts):
        client.sock.send_multipart(parts)
        env = decode(client.recv_frames()[-1])
        assert isinstance(env.msg, Error) and env.msg.errno == errno.EBADMSG, env.msg
        return env.request_id

    assert reply_to([b"\xc1garbage"]) == 0
    assert reply_to([b"a", b"b", b"c"]) == 0
    assert reply_to([b""]) == 0
    # A recognisable envelope with a bad body: its request id is salvaged.
    assert reply_to([msgpack.packb([PROTOCOL_VERSION, "stat", 77, "", {"path": 5}])]) == 77
    assert reply_to([msgpack.packb([PROTOCOL_VERSION + 1, "stat", 78, "", {"path": "/"}])]) == 78
    v = PROTOCOL_VERSION
    assert reply_to([msgpack.packb([v, "stat", 79, "", {"path": "/", "x": 1}])]) == 79


def _is_root(msg: Message) -> bool:
    return isinstance(msg, StatReply) and msg.attrs.kind == "dir"


def _blast_server(fuzz_server, count: int) -> None:
    proc, client = fuzz_server
    _drain(client)
    valid, garbage = server_seeds(client.token)
    rss0 = _rss_kib(proc.proc.pid)
    res = blast(proc.bound, FrameFuzzer(valid, garbage, SEED), count,
                probe=lambda: Stat(path="/"), probe_ok=_is_root, owes_reply=lambda parts: True,
                alive=proc.alive, in_order=False, probe_token=client.token)
    rss = _rss_kib(proc.proc.pid)
    print(res.summary("server"), f"; RSS {rss0 // 1024} -> {rss // 1024} MiB")
    # Bounds: nothing a frame declares grows the server, and a batch of 200 hostile
    # frames and its probe are answered within a few seconds on a loaded 2-CPU box.
    assert rss - rss0 < 128 * 1024, f"RSS grew by {(rss - rss0) // 1024} MiB"
    assert res.worst_probe_s < 10.0, res.worst_probe_s
    assert res.frames == count and res.probes == -(-count // 200)
    assert res.errnos["undecodable"] == 0  # every reply is a valid message
    assert res.mismatches == []
    assert res.replies == res.frames, f"{res.dropped} frames got no reply (seed {SEED})"
    assert proc.alive(), proc.output()[-3000:]
    log = proc.output()
    assert "Traceback" not in log and "bug while" not in log, log[-3000:]
    # Still serving, new agents too: a fresh registration and a request on its token.
    with RawClient(proc.bound) as fresh:
        assert isinstance(register(fresh, make_key_of(proc)), Registered)
        assert _is_root(fresh.call(Stat(path="/")))


def make_key_of(proc: ServerProc) -> bytes:
    return proc.key_path.read_bytes().strip()


def test_fuzzed_frames_at_socket_speed(fuzz_server):
    """CI: SYNTHFS_FUZZ_FRAMES (20,000) mutated frames, a probe after every 200."""
    _blast_server(fuzz_server, CI_FRAMES)


@pytest.mark.slow
def test_a_million_fuzzed_frames(fuzz_server):
    _blast_server(fuzz_server, FULL_FRAMES)


def test_oversized_frame_is_dropped_and_the_server_goes_on(fuzz_server):
    """A frame over the size limit is dropped with its connection; the server serves on."""
    from synthfs.protocol.codec import MAX_FRAME

    proc, client = fuzz_server
    with RawClient(proc.bound, token=client.token) as big:
        big.sock.send(b"\x00" * (MAX_FRAME + 8192))
        assert not big.sock.poll(500)  # no reply: ZeroMQ refused the message
        assert _is_root(big.call(Stat(path="/")))  # the socket reconnected, served again
    assert proc.alive()
    assert _is_root(client.call(Stat(path="/")))


def test_a_client_that_never_reads_does_not_stall_others(fuzz_server):
    """5,000 pipelined reads from a client that never reads its replies: others still served."""
    from synthfs.protocol.messages import CHUNK_SIZE, Read

    proc, client = fuzz_server
    (proc.root / "big").write_bytes(b"x" * CHUNK_SIZE)
    hog = RawClient(proc.bound, token=client.token)
    hog.sock.setsockopt(zmq.SNDHWM, 0)
    hog.sock.setsockopt(zmq.RCVHWM, 1)
    try:
        for _ in range(5000):
            hog.send(Read(path="/big", offset=0, length=CHUNK_SIZE))
        started = time.monotonic()
        for _ in range(20):
            assert _is_root(client.call(Stat(path="/"), timeout=20))
        assert time.monotonic() - started < 20
        assert proc.alive()
    finally:
        hog.close()
        (proc.root / "big").unlink()


def test_no_request_plants_a_setuid_file(fuzz_server):
    """Found by a syscall fuzzer: chmod 04755 on /data reached the repository as is.

    The repository is a host directory: a setuid or setgid file there runs as
    the server's user for anyone who executes it natively. The bits are dropped.
    """
    import os
    import stat

    from synthfs.protocol.messages import SetAttr, UploadChunk, UploadCommit

    proc, client = fuzz_server
    (proc.root / "prog").write_bytes(b"#!/bin/sh\n")
    reply = client.call(SetAttr(path="/prog", mode=0o6755))
    assert isinstance(reply, StatReply) and reply.attrs.mode == 0o755, reply
    assert client.call(UploadChunk(upload_id="setid-1", offset=0, data=b"x")).kind == "done"
    reply = client.call(UploadCommit(upload_id="setid-1", path="/prog2", size=1, mode=0o6777))
    assert isinstance(reply, StatReply) and reply.attrs.mode == 0o777, reply
    for name in ("prog", "prog2"):
        mode = os.stat(proc.root / name).st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID), f"{name}: {mode:o}"
        os.unlink(proc.root / name)


# -- decode bombs: frames that declare far more than they carry --------------------------


def _bombs() -> dict[str, bytes]:
    """Frames of at most MAX_FRAME bytes that cost msgpack's defaults seconds and gigabytes."""
    from synthfs.protocol.codec import MAX_FRAME

    n = MAX_FRAME - 16
    env = b"\x95" + msgpack.packb([1, "stat", 99, ""])[1:]  # [1, "stat", 99, "", <body>]
    return {
        # one array header of ~8M items, each an empty map (~70 bytes of Python each)
        "empty maps": b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n,
        "empty arrays": b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n,
        # a body that declares 2^32-1 fields and holds millions of tiny ones
        "huge body": env + b"\xdf\xff\xff\xff\xff" + b"\xa1a\x90" * (n // 3),
        # a tree of 16-wide arrays of empty maps: small headers, many objects
        "tree": b"\x95" + b"\xdc\xff\xff" * 1024 + b"\x80" * (n - 4096),
        # deep nesting
        "deep": b"\x91" * n,
        # array16 headers preallocating 65535 slots each, nested as deep as msgpack goes
        "prealloc": b"\xdc\xff\xff" * (n // 3),
    }


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_decode_bombs_cost_milliseconds_and_no_memory(fuzz_server):
    """Each bomb is refused in milliseconds, the server's RSS stays bounded, and a
    registered client is served all the while (msgpack's defaults: ~5 s and ~1.2 GB)."""
    import errno
    import threading

    from synthfs.protocol.codec import decode
    from synthfs.protocol.messages import Error

    proc, client = fuzz_server
    _drain(client)
    pid = proc.proc.pid
    rss0 = _rss_kib(pid)
    peak = rss0
    stop = threading.Event()
    served: list[float] = []
    failures: list[str] = []

    def agent_side() -> None:
        with RawClient(proc.bound, client.token) as agent:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    reply = agent.call(Stat(path="/"), timeout=5.0)
                except TimeoutError:
                    failures.append("a Stat got no reply within 5 s")
                    return
                if not _is_root(reply):
                    failures.append(repr(reply))
                served.append(time.perf_counter() - t)
                time.sleep(0.005)

    thread = threading.Thread(target=agent_side)
    thread.start()
    times: dict[str, float] = {}
    try:
        for name, frame in _bombs().items():
            worst = 0.0
            for _ in range(3):
                t = time.perf_counter()
                client.sock.send(frame)
                env = decode(client.recv_frames(timeout=10.0)[-1])
                worst = max(worst, time.perf_counter() - t)
                assert isinstance(env.msg, Error) and env.msg.errno == errno.EBADMSG, env.msg
                peak = max(peak, _rss_kib(pid))
            times[name] = worst
    finally:
        stop.set()
        thread.join(30)
    print({k: f"{v * 1000:.1f} ms" for k, v in times.items()},
          f"RSS {rss0 // 1024} -> peak {peak // 1024} MiB; {len(served)} Stats served, "
          f"slowest {max(served, default=0) * 1000:.1f} ms")
    assert not failures, failures
    assert served, "the registered client was never served"
    # An 8 MiB frame is received and copied once or twice; nothing grows with what it declares.
    assert peak - rss0 < 64 * 1024, f"RSS grew by {(peak - rss0) // 1024} MiB"
    assert max(times.values()) < 0.5, times
    assert proc.alive()
