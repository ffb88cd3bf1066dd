"""``[host] network`` in the interposer: socket, connect, bind, sendto, sendmsg, sendmmsg.

Pure units with a fake guest memory and the real ``RunEnv.check_net``; the
filter built per policy; then ``ci.toml`` (loopback only) run for real. No
test sends a packet off the machine: the non-loopback address is 192.0.2.1
(TEST-NET-1) and the sandbox must refuse the connect before the kernel sees it.
"""

from __future__ import annotations

import ast
import errno
import io
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import helpers
import pytest
from test_handlers import FakeEnv, FakeGuest

from synthfs.interposer.actions import Continue, Fail, Return, RunChecked, Scratch
from synthfs.interposer.filter import active_gates, build_filter
from synthfs.interposer.ports import Call, FsState, Proc
from synthfs.interposer.run import RunEnv
from synthfs.interposer.syscalls import BY_NAME, Gate
from synthfs.policy.engine import Policy

NET_POLICY = """\
version = 1
name = "net"
description = "unit tests: network = {mode}"
default = "allow"

[[mount]]
path = "/data"

[host]
network = "{mode}"
"""


class MemGuest(FakeGuest):
    def __init__(self) -> None:
        super().__init__()
        self.mem: dict[int, bytes] = {}

    def read(self, addr: int, size: int) -> bytes:
        data = self.mem.get(addr)
        if data is None or len(data) < size:
            raise OSError(errno.EFAULT, "bad address")
        return data[:size]


class NetEnv(FakeEnv):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.policy = Policy.from_text(NET_POLICY.format(mode=mode), name="net.toml")
        self.log = io.StringIO()
        self.run_env = RunEnv(self.ns, self.repo, self.host, self.policy, self.log)  # type: ignore[arg-type]
        self.network = self.policy.network

    def check_net(self, call: Call, op: str, address: str, local: bool) -> int:
        return self.run_env.check_net(call, op, address, local)

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


def sin(ip: str, port: int) -> bytes:
    return (
        struct.pack("<H", socket.AF_INET)
        + struct.pack(">H", port)
        + socket.inet_aton(ip)
        + bytes(8)
    )


def sin6(ip: str, port: int) -> bytes:
    return (
        struct.pack("<H", socket.AF_INET6)
        + struct.pack(">HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, ip)
        + bytes(4)
    )


def sun(path: str) -> bytes:
    return struct.pack("<H", socket.AF_UNIX) + path.encode() + b"\0"


def msghdr(name: int, namelen: int) -> bytes:
    return struct.pack("<QI4xQQQQi4x", name, namelen, 0, 0, 0, 0, 0)


def make(mode: str):
    guest, env = MemGuest(), NetEnv(mode)
    proc = Proc(tgid=guest.tgid, fs=FsState(), exe="/usr/bin/curl", app=env.policy.unmatched)

    def call(name: str, *args: int):
        spec = BY_NAME[name]
        assert spec.handler is not None
        full = (list(args) + [0] * 6)[:6]
        return spec.handler(Call(spec.nr, name, tuple(full), guest, proc), env)

    return guest, env, call


AF_VSOCK = 40


@pytest.mark.parametrize("mode", ["deny", "loopback", "allow"])
def test_socket_creation(mode: str) -> None:
    _guest, env, call = make(mode)
    ip = call("socket", socket.AF_INET, socket.SOCK_STREAM, 0)
    ip6 = call("socket", socket.AF_INET6, socket.SOCK_DGRAM, 0)
    assert call("socket", socket.AF_UNIX, socket.SOCK_STREAM, 0) == Continue()
    assert call("socket", socket.AF_NETLINK, socket.SOCK_RAW, 0) == Continue()
    vsock = call("socket", AF_VSOCK, socket.SOCK_STREAM, 0)
    # upper bits of the register are ignored by the kernel: so by us
    hi = call("socket", (1 << 32) | socket.AF_INET, socket.SOCK_STREAM, 0)
    if mode == "deny":
        assert ip == ip6 == vsock == hi == Fail(errno.EACCES)
        assert [r["path"] for r in env.records()] == ["AF_INET", "AF_INET6", "family 40", "AF_INET"]
    elif mode == "loopback":
        assert ip == ip6 == hi == Continue() and vsock == Fail(errno.EACCES)
    else:
        assert ip == ip6 == vsock == hi == Continue()


def test_loopback_connect_and_bind() -> None:
    guest, env, call = make("loopback")
    cases = {
        0x1000: (sin("127.0.0.1", 80), True),
        0x2000: (sin("127.9.8.7", 80), True),
        0x3000: (sin("192.0.2.1", 80), False),
        0x4000: (sin("0.0.0.0", 8080), False),  # a listener on every interface
        0x5000: (sin6("::1", 80), True),
        0x6000: (sin6("::ffff:127.0.0.1", 80), True),
        0x7000: (sin6("::ffff:192.0.2.1", 80), False),
        0x8000: (sin6("2001:db8::1", 443), False),
        0x9000: (sin6("::", 80), False),
    }
    for addr, (raw, ok) in cases.items():
        guest.mem[addr] = raw
        for name in ("connect", "bind"):
            r = call(name, 3, addr, len(raw))
            if ok:
                assert isinstance(r, RunChecked) and r.nr == BY_NAME[name].nr
                # the kernel gets our checked copy, not the guest's (writable) memory
                assert r.args == (3, Scratch(raw), len(raw))
            else:
                assert r == Fail(errno.EACCES), (name, raw)
    denied = [(rec["syscall"], rec["path"]) for rec in env.records()]
    assert ("connect", "192.0.2.1:80") in denied and ("bind", "0.0.0.0:8080") in denied
    assert ("connect", "[2001:db8::1]:443") in denied
    assert all(rec["rule"] == "[host] network = 'loopback'" for rec in env.records())


def test_a_changed_sockaddr_after_the_check_does_not_reach_the_kernel() -> None:
    guest, env, call = make("loopback")
    guest.mem[0x1000] = sin("127.0.0.1", 80)
    r = call("connect", 3, 0x1000, 16)
    guest.mem[0x1000] = sin("192.0.2.1", 80)  # a guest thread rewrites it
    assert isinstance(r, RunChecked) and r.args[1] == Scratch(sin("127.0.0.1", 80))


def test_deny_refuses_every_ip_address_and_allow_lets_all_through() -> None:
    guest, env, call = make("deny")
    guest.mem[0x1000] = sin("127.0.0.1", 80)
    assert call("connect", 3, 0x1000, 16) == Fail(errno.EACCES)
    guest.mem[0x2000] = struct.pack("<H", socket.AF_UNSPEC) + bytes(14)  # dissolve: fine
    assert isinstance(call("connect", 3, 0x2000, 16), RunChecked)
    guest, env, call = make("allow")
    guest.mem[0x1000] = sin("192.0.2.1", 80)
    assert call("connect", 3, 0x1000, 16) == Continue()
    assert env.records() == []


def test_sendto_sendmsg_sendmmsg() -> None:
    guest, env, call = make("loopback")
    guest.mem[0x1000] = sin("192.0.2.1", 53)
    guest.mem[0x2000] = sin("127.0.0.53", 53)
    assert call("sendto", 3, 0x9000, 10, 0, 0, 0) == Continue()  # send(): no destination
    assert call("sendto", 3, 0x9000, 10, 0, 0x1000, 16) == Fail(errno.EACCES)
    r = call("sendto", 3, 0x9000, 10, 0, 0x2000, 16)
    assert isinstance(r, RunChecked) and r.args == (
        3,
        0x9000,
        10,
        0,
        Scratch(sin("127.0.0.53", 53)),
        16,
    )
    guest.mem[0x3000] = msghdr(0x1000, 16)
    guest.mem[0x3100] = msghdr(0x2000, 16)
    guest.mem[0x3200] = msghdr(0, 0)
    assert call("sendmsg", 3, 0x3000, 0) == Fail(errno.EACCES)
    # The kernel reads checked copies of the header and of msg_name (scratch page).
    r = call("sendmsg", 3, 0x3100, 0x40)
    header = struct.pack("<QI", 0, 16) + msghdr(0x2000, 16)[12:]
    assert isinstance(r, RunChecked) and r.nr == BY_NAME["sendmsg"].nr
    assert r.args == (3, Scratch(header, ((0, Scratch(sin("127.0.0.53", 53))),)), 0x40)
    r = call("sendmsg", 3, 0x3200, 0)
    assert isinstance(r, RunChecked) and r.args[1] == Scratch(msghdr(0, 0))
    # sendmmsg: one message per call, as a checked sendmsg; msg_len stored at the exit.
    mm = msghdr(0x2000, 16) + bytes(8) + msghdr(0x1000, 16) + bytes(8)
    guest.mem[0x4000] = mm
    guest.mem[0x5000] = mm[64:]
    assert call("sendmmsg", 3, 0x4000, 0, 0) == Continue()
    r = call("sendmmsg", 3, 0x4000, 2, 0x40)
    assert isinstance(r, RunChecked) and r.nr == BY_NAME["sendmsg"].nr
    assert r.args == (3, Scratch(header, ((0, Scratch(sin("127.0.0.53", 53))),)), 0x40)
    assert r.after is not None
    assert r.after(10) == Return(1, ((0x4000 + 56, (10).to_bytes(4, "little")),))
    assert r.after(-errno.EAGAIN) is None
    assert call("sendmmsg", 3, 0x5000, 1, 0) == Fail(errno.EACCES)  # the rest, sent again
    assert call("sendto", 3, 0x9000, 10, 0, 0x1000, 129) == Fail(errno.EINVAL)
    assert call("connect", 3, 0xDEAD, 16) == Fail(errno.EFAULT)
    assert {rec["op"] for rec in env.records()} == {"send"}


def test_unix_paths_follow_the_host_rules_and_refusals() -> None:
    guest, env, call = make("deny")
    guest.mem[0x1000] = sun("/run/app.sock")
    guest.mem[0x2000] = sun("/cache/agent.sock")  # FakeHost refuses /cache
    r = call("connect", 3, 0x1000, 16)
    assert isinstance(r, RunChecked) and r.args[1] == Scratch(sun("/run/app.sock"))
    assert call("connect", 3, 0x2000, 19) == Fail(errno.EACCES)
    seen: list[tuple[str, str]] = []

    def check_host(c: Call, op: str, path: str, via: str = "") -> int:
        seen.append((op, path))
        return errno.EACCES

    env.check_host = check_host  # type: ignore[method-assign]
    assert call("connect", 3, 0x1000, 16) == Fail(errno.EACCES)
    assert call("bind", 3, 0x1000, 16) == Fail(errno.EACCES)
    assert call("sendto", 3, 0x9000, 1, 0, 0x1000, 16) == Fail(errno.EACCES)
    assert seen == [
        ("write", "/run/app.sock"),
        ("create", "/run/app.sock"),
        ("write", "/run/app.sock"),
    ]


def test_the_filter_traps_the_network_only_when_the_policy_restricts_it() -> None:
    allow = Policy.from_text(NET_POLICY.format(mode="allow"))
    loopback = Policy.from_text(NET_POLICY.format(mode="loopback"))
    assert active_gates(Policy.default("/data")) == {Gate.ALWAYS}
    # [host] present: sendto paths, and fchmod & co. on host fds
    assert active_gates(allow) == {Gate.ALWAYS, Gate.SEND, Gate.HOST}
    assert active_gates(loopback) == set(Gate) == active_gates(None)
    sizes = [build_filter(p).instructions for p in (Policy.default("/data"), allow, loopback)]
    assert sizes[0] < sizes[1] < sizes[2] == build_filter().instructions
    for name in ("socket", "sendto", "sendmsg", "sendmmsg"):
        assert BY_NAME[name].gate is not Gate.ALWAYS
    assert BY_NAME["connect"].gate is Gate.ALWAYS  # AF_UNIX paths are always checked


# -- ci.toml for real ---------------------------------------------------------------------------

SYNTHFS = helpers.synthfs_command()
ROOT = Path(__file__).resolve().parents[2]

GUEST = textwrap.dedent("""\
    import errno, socket, sys, time
    port = int(sys.argv[1])
    s = socket.socket()
    s.settimeout(5)
    t0 = time.monotonic()
    try:
        s.connect(("192.0.2.1", 80))
        print("offsite=CONNECTED")
    except OSError as e:
        fast = "fast" if time.monotonic() - t0 < 1 else "slow"
        print("offsite=" + errno.errorcode.get(e.errno, str(e.errno)), fast)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b"x", ("192.0.2.1", 9))
        print("udp=SENT")
    except OSError as e:
        print("udp=" + errno.errorcode.get(e.errno, str(e.errno)))
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"hello from the guest\\n")
    c.close()
    print("loopback=ok")
    """)


@pytest.mark.ptrace
def test_ci_toml_network_is_loopback_only(tmp_path: Path) -> None:
    data = tmp_path / "ci-data"
    (data / "fixtures").mkdir(parents=True)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "guest.py").write_text(GUEST)
    audit = tmp_path / "audit.jsonl"
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    got: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                got.append(conn.makefile("rb").readline())
        except OSError:
            pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        r = subprocess.run(
            [*SYNTHFS, "run", "--data", str(data), "--policy", str(ROOT / "policies" / "ci.toml"),
             "--audit", str(audit), "--", sys.executable, str(ws / "guest.py"),
             str(listener.getsockname()[1])],
            capture_output=True, text=True, timeout=90, cwd=ROOT,
            env={**os.environ, "WORKSPACE": str(ws)},
        )  # fmt: skip
        server.join(30)
    finally:
        listener.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["offsite=EACCES fast", "udp=EACCES", "loopback=ok"]
    assert got == [b"hello from the guest\n"]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    net = [
        (rec["syscall"], rec["path"], rec["errname"])
        for rec in records
        if rec["op"] == "connect" or rec["op"] == "send"
    ]
    assert net == [("connect", "192.0.2.1:80", "EACCES"), ("sendto", "192.0.2.1:9", "EACCES")]


# -- a guest thread rewrites msg_name between the check and the kernel's copy ------------------

RACE_GUEST = textwrap.dedent("""\
    import ctypes, errno, socket, struct, sys, threading
    call, own, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    libc = ctypes.CDLL(None, use_errno=True)
    head = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port)
    near, far = head + socket.inet_aton("127.0.0.1"), head + socket.inet_aton(own)
    name = ctypes.create_string_buffer(near + bytes(8), 16)
    data = ctypes.create_string_buffer(b"x")
    iov = (ctypes.c_uint64 * 2)(ctypes.addressof(data), 1)
    # mmsghdr: msghdr { name, namelen, iov, iovlen, control, controllen, flags }, len
    hdr = (ctypes.c_uint64 * 8)(ctypes.addressof(name), 16, ctypes.addressof(iov), 1, 0, 0, 0, 0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = False

    def flip():
        while not stop:
            ctypes.memmove(name, far, 8)
            ctypes.memmove(name, near, 8)

    t = threading.Thread(target=flip)
    t.start()
    counts = {"ok": 0}
    for _ in range(n):
        if call == "sendmsg":
            r = libc.sendmsg(s.fileno(), hdr, 0)
        else:
            r = libc.sendmmsg(s.fileno(), hdr, 1, 0)
        if r < 0:
            e = errno.errorcode.get(ctypes.get_errno(), "?")
            counts[e] = counts.get(e, 0) + 1
        else:
            counts["ok"] += 1
    stop = True
    t.join()
    print(counts)
    """)


def _own_address() -> str | None:
    """This machine's address on its default route (no packet is sent to find it)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))
        own = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if own.startswith("127.") else own


@pytest.mark.ptrace
@pytest.mark.parametrize("call", ["sendmsg", "sendmmsg"])
def test_a_rewritten_msg_name_never_reaches_a_denied_address(tmp_path: Path, call: str) -> None:
    """Under loopback, a thread flips msg_name between 127.0.0.1 and this machine's own
    address (denied, yet local: nothing leaves the machine) while another sends."""
    own = _own_address()
    if own is None:
        pytest.skip("no non-loopback address on this machine")
    near = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    near.bind(("127.0.0.1", 0))
    port = near.getsockname()[1]
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind((own, port))
    far.setblocking(False)
    ws = tmp_path / "ws"
    (tmp_path / "data").mkdir()
    ws.mkdir()
    (ws / "race.py").write_text(RACE_GUEST)
    argv = [sys.executable, str(ws / "race.py"), call, own, str(port), "3000"]

    def escaped() -> int:
        got = 0
        while True:
            try:
                far.recv(16)
            except BlockingIOError:
                return got
            got += 1

    try:
        native = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert native.returncode == 0, native.stderr
        assert escaped() > 0  # the control: natively the flipped address is reached
        r = subprocess.run(
            [*SYNTHFS, "run", "--data", str(tmp_path / "data"),
             "--policy", str(ROOT / "policies" / "ci.toml"), "--", *argv],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
            env={**os.environ, "WORKSPACE": str(ws)},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        counts = ast.literal_eval(r.stdout.strip().splitlines()[-1])
        assert escaped() == 0
        assert counts["ok"] > 0 and counts.get("EACCES", 0) > 0, counts
    finally:
        near.close()
        far.close()
