"""Hostile frames at socket speed: the generator and the driver behind the socket fuzzers.

Trusts nothing it talks to: a peer is a real ``python -m server`` or
``python -m agent`` process, judged only by what comes back on its socket and
whether it is still alive.

Hypothesis spends milliseconds per example; a million frames need a few
microseconds each. So :class:`FrameFuzzer` precomputes *seeds* (valid
encoded requests with odd but legal arguments, and msgpack envelopes with
wrong shapes and types) once, then makes each frame by a cheap random
mutation: send a seed as is, flip bits, overwrite bytes with msgpack
markers, splice two seeds, truncate, insert "interesting" headers (huge
array, map and bin lengths, ext types), pure random bytes, and multipart
shapes (a seed split across parts, empty parts, a REQ-style delimiter).
Structure-aware seeds are among them: every message kind with one field made
hostile (containers nested a dozen deep or 40 wide, wrong types, 20 KB
strings, or a header declaring 2**32-1 items where the value should be).
Everything comes from one ``random.Random(seed)``: a failure names its seed
and replays exactly.

:func:`blast` drives a DEALER socket with a bounded window (at most two
batches in flight), sends a valid *probe* request after every batch and
waits for its answer, and checks that the process is still alive: a peer
that crashes, hangs or stops answering valid requests fails within one
batch. It counts frames, replies (by kind and errno) and drops.

``SYNTHFS_FUZZ_FRAMES`` sets the count of the bounded (CI) runs;
``SYNTHFS_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import collections
import errno
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import attrs
import msgpack
import zmq

from synthfs.protocol.codec import DecodeError, decode, encode
from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    REGISTRY,
    Commit,
    Error,
    Hello,
    List,
    Message,
    Mkdir,
    Open,
    Read,
    Readlink,
    Register,
    Remove,
    Rename,
    SetAttr,
    Stat,
    Symlink,
    Sync,
    UploadAbort,
    UploadChunk,
    UploadCommit,
)

__all__ = [
    "CI_FRAMES",
    "FULL_FRAMES",
    "SEED",
    "BlastResult",
    "FrameFuzzer",
    "agent_seeds",
    "blast",
    "decodes",
    "server_seeds",
]

#: Frames per socket in the bounded runs (CI); the slow runs send FULL_FRAMES.
CI_FRAMES = int(os.environ.get("SYNTHFS_FUZZ_FRAMES", "20000"))
FULL_FRAMES = 1_000_000
SEED = int(os.environ.get("SYNTHFS_FUZZ_SEED", "20261127"))

#: Repository-absolute paths, normalised (they reach the handlers) and not.
PATHS = ["/", "/a", "/a/b", "/d", "/d/f", "/d/g", "/f", "/l", "/.synthfs-staging",
         "/.synthfs-staging/x", "/..", "../x", "", "/\x00", "//", "/d/", "/./d",
         "/" + "x" * 255, "/" + "y" * 300, "/a" * 2000, "/\u00e9\u4e2d", "/f\n"]
_NORMAL = [p for p in PATHS if p.startswith("/") and ".." not in p and "\x00" not in p
           and "//" not in p and "/./" not in p and (p == "/" or not p.endswith("/"))]

#: Bytes that msgpack reads as the start of something: every type marker and a few fixes.
_MARKERS = bytes(range(0xC0, 0x100)) + bytes([0x00, 0x7F, 0x80, 0x8F, 0x90, 0x95, 0x9F,
                                              0xA0, 0xA4, 0xBF])
#: Headers claiming huge or odd contents: array/map/str/bin of 2**32-1, ext types, u64 max.
_INTERESTING = [
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xc7\xff\xff", b"\xd4\xff\x00",
    b"\xd6\xff\x00\x00\x00\x00", b"\xd7\xff" + b"\xff" * 8, b"\xcf" + b"\xff" * 8,
    b"\xd3\x80" + b"\x00" * 7, b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xc1",
    b"\x95" * 64, b"\x91" * 2000, b"\x81\xa1a" * 500, b"\xda\xff\xff",
]


def decodes(frame: bytes) -> bool:
    """Whether the codec accepts ``frame`` (what an agent answers rather than drops)."""
    try:
        decode(frame, request=True)  # as the agent and the server decode a request
    except DecodeError:
        return False
    return True


def _requests_for_agent() -> list[Message]:
    out: list[Message] = [Hello(version=v) for v in (0, 1, 2, 2**32 - 1)]
    out.append(Sync())
    for p in _NORMAL:
        out += [Stat(path=p), List(path=p), Readlink(path=p), Commit(path=p),
                Mkdir(path=p, mode=0o755), Remove(path=p), Remove(path=p, directory=True),
                Symlink(target="d/f", path=p), Symlink(target="/" + "z" * 200, path=p),
                SetAttr(path=p, mode=0o600), SetAttr(path=p, size=3),
                SetAttr(path=p, atime_ns=-1, mtime_ns=2**62)]
        for flags in (0, 1, 2, 0o100, 0o1101, 0o302, 0o200000, 0o4000, 0o10000000, 0o20200000):
            out.append(Open(path=p, flags=flags, mode=0o644))
        for q in _NORMAL[:8]:
            out.append(Rename(src=p, dst=q))
    return out


def _requests_for_server() -> list[Message]:
    out: list[Message] = []
    for p in PATHS:
        try:
            out += [Stat(path=p), List(path=p), Readlink(path=p), Mkdir(path=p),
                    Read(path=p, offset=0, length=4096), Read(path=p, offset=2**40, length=1),
                    Read(path=p, offset=0, length=16, version="1-2-3-4"),
                    Remove(path=p), Remove(path=p, directory=True),
                    Symlink(target="../../etc/passwd", path=p), Symlink(target="/", path=p),
                    SetAttr(path=p, mode=0o7777), SetAttr(path=p, size=5),
                    SetAttr(path=p, atime_ns=-(2**63), mtime_ns=2**63 - 1),
                    Rename(src=p, dst="/a"), Rename(src="/d/f", dst=p),
                    UploadCommit(upload_id="u1", path=p, size=4)]
        except (TypeError, ValueError):
            continue
    for uid in ("u1", "u2", "", "../x", "\x00"):
        out += [UploadChunk(upload_id=uid, offset=0, data=b"data"),
                UploadChunk(upload_id=uid, offset=2**30, data=b"x"),
                UploadAbort(upload_id=uid)]
    out += [Register(version=v, agent_id="fuzz", nonce="n", timestamp_ns=time.time_ns(),
                     mac="00" * 32) for v in (0, PROTOCOL_VERSION)]
    out += [Open(path="/d/f", flags=0), Commit(path="/d/f"), Sync(), Hello(version=1)]
    return out


def _garbage_envelopes(rng: random.Random, token: str, n: int) -> list[bytes]:
    """msgpack that looks like an envelope: wrong versions, kinds, ids, tokens and bodies."""
    scalars: list[Any] = [None, True, False, 0, 1, -1, 2**64 - 1, -(2**63), 1.5, float("nan"),
                          "", "x", "stat", b"", b"\xff", [], {}, "/" * 50, "a" * 5000]
    fields = ["path", "src", "dst", "target", "offset", "length", "size", "mode", "data",
              "upload_id", "flags", "directory", "version", "atime_ns", "mtime_ns", "mac",
              "nonce", "agent_id", "timestamp_ns", "x", ""]
    kinds = ["stat", "list", "read", "open", "commit", "register", "error", "welcome",
             "stat_reply", "hello", "sync", "nope", "", "STAT"]
    out = []
    for _ in range(n):
        body: Any = {rng.choice(fields): rng.choice(scalars + PATHS)
                     for _ in range(rng.randrange(5))}
        if rng.random() < 0.1:
            body = rng.choice(scalars)
        env: list[Any] = [rng.choice([PROTOCOL_VERSION] * 4 + scalars), rng.choice(kinds),
                          rng.choice([1, 2, 7, 2 ** 64 - 1, *scalars]),
                          rng.choice([token, "", token[:-1] + "A", *scalars]), body]
        cut = rng.random()
        if cut < 0.1:
            env = env[:rng.randrange(5)]
        elif cut < 0.2:
            env.append(rng.choice(scalars))
        try:
            out.append(msgpack.packb(env, use_bin_type=True))
        except (TypeError, ValueError, OverflowError):
            continue
    return out


def _valid_frames(rng: random.Random, msgs: Sequence[Message], token: str) -> list[bytes]:
    out = []
    for msg in msgs:
        try:
            out.append(encode(msg, rng.randrange(1, 2**32), token))
        except (TypeError, ValueError):  # e.g. a path the codec cannot encode
            continue
    return out


def server_seeds(token: str, seed: int = SEED) -> tuple[list[bytes], list[bytes]]:
    """(valid requests carrying ``token`` and some without, garbage envelopes) for a server."""
    rng = random.Random(seed)
    msgs = _requests_for_server()
    valid = _valid_frames(rng, msgs, token) + _valid_frames(rng, msgs[::7], "")
    return valid, _garbage_envelopes(rng, token, 3000) + _structured_frames(rng, token, 3000)


def agent_seeds(seed: int = SEED) -> tuple[list[bytes], list[bytes]]:
    """(valid interposer requests, garbage envelopes) for an agent."""
    rng = random.Random(seed)
    return (_valid_frames(rng, _requests_for_agent(), ""),
            _garbage_envelopes(rng, "", 3000) + _structured_frames(rng, "", 3000))


def _nested(rng: random.Random, depth: int) -> Any:
    """A hostile value: containers nested ``depth`` deep, wide, or of odd scalars."""
    leaf = rng.choice([None, True, 0, -1, 2**64 - 1, 1.5, "", "/d/f", b"\xff", "a" * 300])
    items = 1  # values in the tree so far: wide levels stop at ~10,000
    for _ in range(depth):
        shape = rng.randrange(4)
        width = rng.randrange(2, 40)
        if shape < 2 or items * width > 10_000:
            leaf = [leaf] if shape % 2 == 0 else {"path": leaf}
            continue
        items *= width
        leaf = [leaf] * width if shape == 2 else {str(i): leaf for i in range(width)}
    return leaf


def _structured_frames(rng: random.Random, token: str, n: int) -> list[bytes]:
    """Every message kind with each field in turn made hostile: a nested or wide container,
    a value of the wrong type, or a raw header declaring a huge length in its place."""
    kinds = sorted(REGISTRY)
    out: list[bytes] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        names = [f.name for f in attrs.fields(REGISTRY[kind])] or ["x"]
        body: dict[str, Any] = {name: rng.choice([0, "/d/f", b"d", False, None]) for name in names}
        victim = rng.choice(names)
        how = rng.randrange(3)
        if how == 0:
            body[victim] = _nested(rng, rng.randrange(1, 12))
        elif how == 1:
            body[victim] = rng.choice([[], {}, 2**64 - 1, -(2**63), "x" * 20000, b"y" * 20000])
        try:
            frame = msgpack.packb([PROTOCOL_VERSION, kind, rng.randrange(1, 2**32),
                                   rng.choice([token, ""]), body], use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            continue
        if how == 2:  # the victim's value replaced by a huge declared length, nothing after it
            key = msgpack.packb(victim)
            at = frame.rfind(key)
            if at >= 0:
                frame = frame[:at + len(key)] + rng.choice(_INTERESTING)
        out.append(frame)
    return out


class FrameFuzzer:
    """An endless, reproducible stream of hostile multipart messages."""

    def __init__(self, valid: list[bytes], garbage: list[bytes], seed: int = SEED,
                 valid_share: float = 0.08) -> None:
        self.rng = random.Random(seed)
        self.valid = valid
        self.seeds = valid + garbage
        self.valid_share = valid_share
        self.random_pool = [os.urandom(n) for n in (0, 1, 2, 5, 17, 64, 300, 4096, 70000)]
        self.shapes: collections.Counter[str] = collections.Counter()
        self._mutators: list[tuple[float, Callable[[], list[bytes]]]] = []
        cumulative = 0.0
        for weight, fn in ((valid_share, self._valid), (0.22, self._flip), (0.12, self._markers),
                           (0.10, self._splice), (0.10, self._truncate), (0.10, self._insert),
                           (0.10, self._garbage), (0.08, self._random),
                           (0.10, self._multipart)):
            cumulative += weight
            self._mutators.append((cumulative, fn))
        self._rnd = self.rng.random

    def next(self) -> list[bytes]:
        x = self._rnd() * self._mutators[-1][0]
        for bound, fn in self._mutators:
            if x < bound:
                return fn()
        return self._mutators[-1][1]()

    # -- mutators: each returns one multipart message ---------------------------------

    def _seed(self) -> bytearray:
        return bytearray(self.rng.choice(self.seeds))

    def _valid(self) -> list[bytes]:
        return [self.rng.choice(self.valid)]

    def _flip(self) -> list[bytes]:
        b = self._seed()
        if b:
            rr = self.rng.randrange
            for _ in range(1 + rr(4)):
                b[rr(len(b))] ^= 1 << rr(8)
        return [bytes(b)]

    def _markers(self) -> list[bytes]:
        b = self._seed()
        if b:
            rr = self.rng.randrange
            for _ in range(1 + rr(3)):
                b[rr(len(b))] = _MARKERS[rr(len(_MARKERS))]
        return [bytes(b)]

    def _splice(self) -> list[bytes]:
        a, b = self._seed(), self._seed()
        rr = self.rng.randrange
        return [bytes(a[:rr(len(a) + 1)] + b[rr(len(b) + 1):])]

    def _truncate(self) -> list[bytes]:
        b = self._seed()
        return [bytes(b[:self.rng.randrange(len(b) + 1)])]

    def _insert(self) -> list[bytes]:
        b = self._seed()
        at = self.rng.randrange(len(b) + 1)
        what = self.rng.choice(_INTERESTING)
        if self.rng.random() < 0.5:
            return [bytes(b[:at] + what + b[at:])]
        return [bytes(b[:at] + what)]

    def _garbage(self) -> list[bytes]:
        return [bytes(self._seed())]

    def _random(self) -> list[bytes]:
        rr = self.rng.randrange
        if self.rng.random() < 0.7:
            return [self.rng.randbytes(rr(64))]
        blob = self.rng.choice(self.random_pool)
        return [blob[rr(len(blob) + 1):]] if blob else [blob]

    def _multipart(self) -> list[bytes]:
        rr = self.rng.randrange
        b = bytes(self._seed())
        shape = rr(5)
        if shape == 0:  # a REQ-style empty delimiter before a frame
            return [b"", b]
        if shape == 1:  # the frame split in two
            at = rr(len(b) + 1)
            return [b[:at], b[at:]]
        if shape == 2:  # empty parts only
            return [b""] * (1 + rr(4))
        if shape == 3:  # a valid frame after junk parts
            return [self.rng.randbytes(rr(20)) for _ in range(1 + rr(3))] + [b]
        return [b, b]  # the same frame twice in one message


@dataclass
class BlastResult:
    """What :func:`blast` saw."""

    frames: int = 0
    expected: int = 0  # replies the peer owes (server: every frame; agent: decodable ones)
    replies: int = 0
    probes: int = 0
    seconds: float = 0.0
    errnos: collections.Counter[str] = field(default_factory=collections.Counter)
    mismatches: list[str] = field(default_factory=list)
    #: the longest wait for a probe's answer (its batch of 200 frames before it)
    worst_probe_s: float = 0.0

    @property
    def dropped(self) -> int:
        return self.frames - self.replies

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def summary(self, name: str) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.errnos.most_common(8))
        return (f"{name}: {self.frames} frames in {self.seconds:.1f} s ({self.rate:.0f}/s): "
                f"{self.replies} replies, {self.dropped} dropped "
                f"({self.expected} replies owed), {self.probes} probes answered "
                f"(slowest after {self.worst_probe_s * 1000:.0f} ms); "
                f"replies by kind: {top}")


def _reply_kind(frame: bytes) -> tuple[int, Message | None, str]:
    try:
        env = decode(frame)
    except DecodeError:
        return -1, None, "undecodable"
    msg = env.msg
    if isinstance(msg, Error):
        return env.request_id, msg, errno.errorcode.get(msg.errno, str(msg.errno))
    return env.request_id, msg, msg.kind


def blast(
    endpoint: str,
    fuzzer: FrameFuzzer,
    count: int,
    *,
    probe: Callable[[], Message],
    probe_ok: Callable[[Message], bool],
    owes_reply: Callable[[list[bytes]], bool],
    alive: Callable[[], bool],
    in_order: bool,
    probe_token: str = "",
    batch: int = 200,
    timeout: float = 30.0,
) -> BlastResult:
    """Send ``count`` fuzzed messages to ``endpoint``; probe after every ``batch``.

    At most two batches (and their probes) are in flight, so neither side's
    high-water mark (1000 messages) is reached and nothing is dropped by
    ZeroMQ itself. Each probe must be answered within ``timeout`` seconds
    with a reply ``probe_ok`` accepts, and ``alive()`` must hold after it;
    else AssertionError. With ``in_order`` (a peer answering one request at
    a time, as the agent does) the replies seen before a probe's answer must
    be exactly the ones its batch owed; otherwise replies are matched in
    total at the end.
    """
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    res = BlastResult()
    rng = random.Random(fuzzer.rng.random())
    pending: collections.OrderedDict[int, int] = collections.OrderedDict()  # rid -> owed so far
    skew = [0]
    sent_at: dict[int, float] = {}
    started = time.monotonic()

    def receive_until_probe() -> None:
        rid0, owed = next(iter(pending.items()))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000)):
                raise AssertionError(
                    f"no answer to probe {res.probes + 1} within {timeout:g} s after "
                    f"{res.frames} frames (seed {SEED}); alive={alive()}")
            parts = sock.recv_multipart()
            rid, msg, kind = _reply_kind(parts[-1])
            if rid in pending and msg is not None and probe_ok(msg):
                if rid != rid0:
                    res.mismatches.append(f"probe {rid} answered before {rid0}")
                del pending[rid]
                res.probes += 1
                res.worst_probe_s = max(res.worst_probe_s,
                                        time.monotonic() - sent_at.pop(rid, time.monotonic()))
                if not alive():
                    raise AssertionError(f"peer died after {res.frames} frames (seed {SEED})")
                if in_order and res.replies - owed != skew[0]:
                    res.mismatches.append(f"before probe {res.probes}: {res.replies} replies, "
                                          f"{owed} owed")
                    skew[0] = res.replies - owed  # each batch's discrepancy is reported once
                if rid == rid0:
                    return
                continue
            res.replies += 1
            res.errnos[kind] += 1

    while res.frames < count:
        for _ in range(min(batch, count - res.frames)):
            parts = fuzzer.next()
            sock.send_multipart(parts)
            res.frames += 1
            if owes_reply(parts):
                res.expected += 1
        rid = rng.randrange(2**40, 2**64)
        sock.send(encode(probe(), rid, probe_token))
        sent_at[rid] = time.monotonic()
        pending[rid] = res.expected
        if len(pending) > 1:
            receive_until_probe()
    while pending:
        receive_until_probe()
    # Out-of-order peers: the last replies may still be on their way.
    deadline = time.monotonic() + timeout
    while res.replies < res.expected and sock.poll(int(max(0, deadline - time.monotonic())
                                                       * 1000)):
        rid, _msg, kind = _reply_kind(sock.recv_multipart()[-1])
        res.replies += 1
        res.errnos[kind] += 1
    res.seconds = time.monotonic() - started
    sock.close(linger=0)
    return res
