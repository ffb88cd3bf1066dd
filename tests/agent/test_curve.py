"""CURVE between agent and server over tcp:// (issue 5): real processes, a recording relay.

A real server (``--curve-secret``/``--curve-clients``) and a real agent
(``--curve-secret``/``--server-key``) on ``tcp://127.0.0.1``; the agent's
upstream link runs through :class:`Relay`, a TCP relay in the test that
records every byte both ways. With CURVE, neither the session token nor a
file's name or content shows in the recording; the same run without CURVE
shows all three (so the check can fail). Unknown keys and plain clients get
nothing, and their frames never reach the service.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from agent_stack import REPO, Stack, _env, wait_until

from synthfs.protocol import curve
from synthfs.protocol.bootstrap import register_mac
from synthfs.protocol.client import Client, Unreachable
from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    Commit,
    Committed,
    Hello,
    Mkdir,
    Open,
    Opened,
    Register,
    Registered,
    Stat,
    StatReply,
    Welcome,
)

NAME = "curve-probe-7d1f0e.txt"
DIR = "curve-dir-3b8e44"
UPLOAD = b"UPLOADED-MARKER-0c77d1 " * 64
CONTENT = b"CONTENT-MARKER-51c9a2e8 " * 64
START = 20.0


class Relay:
    """127.0.0.1:port -> 127.0.0.1:target, recording every byte that passes (both ways)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.recorded = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def bytes(self) -> bytes:
        with self._lock:
            return bytes(self.recorded)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                if key.data is None:
                    down, _ = self.listener.accept()
                    up = socket.create_connection(("127.0.0.1", self.target))
                    self.connections += 1
                    sel.register(down, selectors.EVENT_READ, up)
                    sel.register(up, selectors.EVENT_READ, down)
                    continue
                src, dst = key.fileobj, key.data
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if data:
                    with self._lock:
                        self.recorded += data
                    try:
                        dst.sendall(data)
                        continue
                    except OSError:
                        pass
                for s in (src, dst):
                    sel.unregister(s)
                    s.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _bound(stack: Stack) -> str:
    assert stack.server is not None
    for line in stack.server.output().splitlines():
        found = re.match(r"synthfs server: serving .* on (tcp://\S+)$", line)
        if found:
            return found.group(1)
    raise AssertionError(f"no endpoint in the server's log:\n{stack.server.output()}")


def _port(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (public .key, secret .key_secret); the server trusts agent and probe only."""
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    clients = tmp_path / "clients"
    clients.mkdir()
    out = {name: curve.write_keypair(str(d / name))
           for name in ("server", "agent", "probe", "stranger")}
    for name in ("agent", "probe"):
        os.link(out[name][0], clients / f"{name}.key")
    return out


def _curve_server(stack: Stack, keys: dict[str, tuple[str, str]], *extra: str) -> str:
    stack.server_ep = "tcp://127.0.0.1:*"
    stack.start_server("--curve-secret", keys["server"][1], "--curve-clients",
                       str(Path(keys["agent"][0]).parent.parent / "clients"), *extra)
    return _bound(stack)


def _client_opts(keys: dict[str, tuple[str, str]], name: str) -> dict[int, int | bytes]:
    return curve.client_sockopts(curve.load_keypair(keys[name][1]),
                                 curve.load_public(keys["server"][0]))


def _register(client: Client, key: bytes) -> str:
    nonce, ts = os.urandom(8).hex(), time.time_ns()
    reply = client.call(Register(version=PROTOCOL_VERSION, agent_id="curve-test", nonce=nonce,
                                 timestamp_ns=ts, mac=register_mac(key, "curve-test", nonce, ts)))
    assert isinstance(reply, Registered)
    return reply.token


def _exercise(stack: Stack, keys: dict[str, tuple[str, str]] | None) -> tuple[str, bytes, bytes]:
    """A server (CURVE with ``keys``) and an agent whose upstream and subscription run through
    recording relays: the agent serves Stat and Open of NAME, makes DIR (an invalidation
    on the PUB socket) and uploads UPLOAD into it; a client registers and Stats with its
    own token.

    Returns the token and the two recordings (upstream, invalidations).
    """
    (stack.root / NAME).write_bytes(CONTENT)
    stack.server_ep = "tcp://127.0.0.1:*"
    curve_args: tuple[str, ...] = ()
    sockopts: dict[int, int | bytes] = {}
    if keys is not None:
        curve_args = ("--curve-secret", keys["agent"][1], "--server-key", keys["server"][0])
        sockopts = _client_opts(keys, "probe")
        _curve_server(stack, keys, "--publish", "tcp://127.0.0.1:*")
    else:
        stack.start_server("--publish", "tcp://127.0.0.1:*")
    assert stack.server is not None
    pub = re.search(r"invalidations on (tcp://\S+)", stack.server.output())
    assert pub, stack.server.output()
    upstream, invals = Relay(_port(_bound(stack))), Relay(_port(pub.group(1)))
    try:
        stack.server_ep = upstream.endpoint
        stack.start_agent(*curve_args, "--subscribe", invals.endpoint)
        reply = stack.call(Stat(path=f"/{NAME}"))
        assert isinstance(reply, StatReply) and reply.attrs.size == len(CONTENT)
        got = stack.call(Open(path=f"/{NAME}", flags=os.O_RDONLY))
        assert isinstance(got, Opened)
        assert Path(got.host_path).read_bytes() == CONTENT
        stack.call(Mkdir(path=f"/{DIR}"))
        assert (stack.root / DIR).is_dir()
        new = stack.call(Open(path=f"/{DIR}/up", flags=os.O_WRONLY | os.O_CREAT, mode=0o644))
        assert isinstance(new, Opened)
        Path(new.host_path).write_bytes(UPLOAD)
        assert isinstance(stack.call(Commit(path=f"/{DIR}/up")), Committed)
        assert (stack.root / DIR / "up").read_bytes() == UPLOAD
        held = {"token": ""}
        with Client(upstream.endpoint, timeout=10, sockopts=sockopts,
                    token_provider=lambda: held["token"]) as client:
            held["token"] = _register(client, stack.key.read_bytes().strip())
            assert isinstance(client.call(Stat(path=f"/{NAME}")), StatReply)  # with the token
        assert len(held["token"]) >= 32
        time.sleep(1.0)  # beats and the invalidation of DIR reach the relay
        assert upstream.connections >= 2 and invals.connections >= 1
        return held["token"], upstream.bytes(), invals.bytes()
    finally:
        upstream.close()
        invals.close()


def test_curve_link_carries_nothing_in_clear_and_plain_does(tmp_path: Path,
                                                           keys: dict[str, tuple[str, str]]):
    # With CURVE: the agent serves, and the recordings hold no token, name or content.
    stack = Stack(tmp_path)
    try:
        token, seen, published = _exercise(stack, keys)
        assert "CURVE on" in stack.server.output()  # type: ignore[union-attr]
    finally:
        stack.stop()
    assert len(seen) > len(CONTENT) and len(published) > 200
    assert b"CURVE" in seen and b"CURVE" in published  # the ZMTP greeting names the mechanism
    for secret in (token.encode(), NAME.encode(), CONTENT[:24], UPLOAD[:24], b"register",
                   b"stat"):
        assert secret not in seen, secret
    for secret in (DIR.encode(), b"inval", b"beat"):
        assert secret not in published, secret

    # The same exchange without CURVE (loopback tcp): everything shows, so the test can fail.
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = Stack(plain_dir)
    try:
        token, seen, published = _exercise(plain, None)
    finally:
        plain.stop()
    for secret in (token.encode(), NAME.encode(), CONTENT[:24], UPLOAD[:24]):
        assert secret in seen, secret
    # The invalidation channel is sealed with a key only registered agents get
    # (synthfs.protocol.sealed), with or without CURVE.
    assert len(published) > 200
    for secret in (DIR.encode(), b"inval", b"beat"):
        assert secret not in published, secret


def test_unknown_keys_and_plain_clients_get_nothing(tmp_path: Path,
                                                   keys: dict[str, tuple[str, str]]):
    stack = Stack(tmp_path)
    try:
        bound = _curve_server(stack, keys, "-vv")
        key = stack.key.read_bytes().strip()
        # An agent whose key the server does not list: a clear error at start-up, quickly.
        stack.server_ep = bound
        started = time.monotonic()
        agent = stack.start_agent("--curve-secret", keys["stranger"][1],
                                  "--server-key", keys["server"][0], "--timeout", "3",
                                  wait=False)
        assert agent.popen.wait(START) == 1, agent.output()
        assert time.monotonic() - started < START
        assert "refused this agent's CURVE key" in agent.output(), agent.output()
        # A client with an unknown key, a plain client, and one with a wrong server key.
        stranger = _client_opts(keys, "stranger")
        wrong_server = curve.client_sockopts(curve.load_keypair(keys["probe"][1]),
                                             curve.load_public(keys["stranger"][0]))
        for opts in (stranger, {}, wrong_server):
            with Client(bound, timeout=1.5, retries=0, sockopts=opts) as c, \
                    pytest.raises(Unreachable):
                _register(c, key)
        # The allowed key still gets through; only its Register reached the service.
        with Client(bound, timeout=10, sockopts=_client_opts(keys, "probe")) as c:
            assert _register(c, key)
        log = stack.server.output()  # type: ignore[union-attr]
        assert "refused unknown CURVE client key" in log, log
        assert len(re.findall(r"register #\d+ ->", log)) == 1, log
    finally:
        stack.stop()


def test_subscription_over_curve(tmp_path: Path, keys: dict[str, tuple[str, str]]):
    """The PUB socket is CURVE too: the agent's SUB gets the beats (promises go live)."""
    stack = Stack(tmp_path)
    try:
        _curve_server(stack, keys, "--publish", "tcp://127.0.0.1:*")
        out = stack.server.output()  # type: ignore[union-attr]
        pub = re.search(r"invalidations on (tcp://\S+)", out)
        assert pub, out
        # A plain SUB gets no beat within a second (the PUB only talks CURVE).
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub.group(1))
        try:
            assert not sub.poll(1500)
        finally:
            sub.close(linger=0)
        stack.server_ep = _bound(stack)
        agent = stack.start_agent("--curve-secret", keys["agent"][1], "--server-key",
                                  keys["server"][0], "--subscribe", pub.group(1), "-vv")
        assert isinstance(stack.call(Stat(path="/")), StatReply)  # drains the subscription
        # Both CURVE secret key files are trusted paths, the server's too (a loopback
        # server tells its own in Registered.trusted_paths): refused to every guest.
        welcome = stack.call(Hello(version=PROTOCOL_VERSION))
        assert isinstance(welcome, Welcome)
        for secret in (keys["server"][1], keys["agent"][1]):
            assert os.path.abspath(secret) in welcome.refused_paths, welcome.refused_paths
        # A beat came through the CURVE PUB: the agent follows the server's instance.
        assert wait_until(lambda: isinstance(stack.call(Stat(path="/")), StatReply)
                          and "following instance" in agent.output(), 5), agent.output()
    finally:
        stack.stop()


def test_key_files_are_checked(tmp_path: Path, keys: dict[str, tuple[str, str]]):
    secret = keys["server"][1]
    assert os.stat(secret).st_mode & 0o777 == 0o600
    assert os.stat(keys["server"][0]).st_mode & 0o777 == 0o644
    os.chmod(secret, 0o640)
    with pytest.raises(PermissionError, match=r"mode 0640.*chmod 600"):
        curve.load_keypair(secret)
    with pytest.raises(ValueError, match="secret key"):
        curve.load_public(keys["agent"][1])  # a secret file where a public one belongs
    with pytest.raises(ValueError, match="no secret-key"):
        curve.load_keypair(keys["agent"][0])
    stack = Stack(tmp_path)
    stack.server_ep = "tcp://127.0.0.1:*"
    server = stack.start_server("--curve-secret", secret, "--curve-clients",
                                str(tmp_path / "clients"), wait=False)
    assert server.popen.wait(START) == 2
    assert "CURVE secret key" in server.output() and "chmod 600" in server.output()
    os.chmod(keys["agent"][1], 0o604)
    stack.server_ep = "tcp://127.0.0.1:9"
    agent = stack.start_agent("--curve-secret", keys["agent"][1], "--server-key",
                              keys["server"][0], wait=False)
    assert agent.popen.wait(START) == 2
    assert "mode 0604" in agent.output(), agent.output()


def test_remote_tcp_needs_curve(tmp_path: Path):
    stack = Stack(tmp_path)
    stack.server_ep = "tcp://192.0.2.1:7000"  # TEST-NET-1: never reached
    agent = stack.start_agent(wait=False)
    assert agent.popen.wait(START) == 2
    assert "needs CURVE" in agent.output(), agent.output()
    stack.server_ep = "tcp://0.0.0.0:0"
    server = stack.start_server(wait=False)
    assert server.popen.wait(START) == 2
    assert "needs CURVE" in server.output(), server.output()


def test_zap_decisions():
    ok = curve.KeyPair(*zmq.curve_keypair())
    allowed = frozenset({ok.public})
    raw = zmq.utils.z85.decode(ok.public)
    req = [b"1.0", b"7", b"synthfs", b"10.0.0.2", b"", b"CURVE"]
    assert curve.zap_reply([*req, raw], allowed)[0][:3] == [b"1.0", b"7", b"200"]
    other = zmq.utils.z85.decode(zmq.curve_keypair()[0])
    assert curve.zap_reply([*req, other], allowed)[0][2] == b"400"
    assert curve.zap_reply([*req[:5], b"NULL"], allowed)[0][2] == b"400"
    assert curve.zap_reply([b"2.0", b"1"], allowed)[0][2] == b"400"


def test_synthfs_keys_cli(tmp_path: Path):
    cmd = [sys.executable, "-m", "synthfs.cli", "keys", str(tmp_path / "node")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), check=False)
    assert done.returncode == 0, done.stderr
    pair = curve.load_keypair(str(tmp_path / "node.key_secret"))
    assert curve.load_public(str(tmp_path / "node.key")) == pair.public
    assert pair.public.decode() in done.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), check=False)
    assert again.returncode == 1 and "not overwritten" in again.stderr


def test_without_a_zap_handler_nobody_is_admitted():
    """Defence in depth: a CURVE server socket whose context has no ZAP handler (a bug in
    the server's set-up) refuses every client instead of admitting any key."""
    ctx = zmq.Context()
    try:
        server = curve.KeyPair(*zmq.curve_keypair())
        client = curve.KeyPair(*zmq.curve_keypair())
        router = ctx.socket(zmq.ROUTER)
        curve.apply(router, curve.server_sockopts(server))
        port = router.bind_to_random_port("tcp://127.0.0.1")
        try:
            with pytest.raises(TimeoutError):
                curve.handshake(ctx, f"tcp://127.0.0.1:{port}",
                                curve.client_sockopts(client, server.public), 1.0)
        finally:
            router.close(linger=0)
    finally:
        ctx.term()


def test_two_curve_servers_of_one_repository_share_a_key_pair(tmp_path: Path,
                                                               keys: dict[str, tuple[str, str]]
                                                               ) -> None:
    """Two servers over one directory with the same CURVE key pair; the agent is given
    both (one --server-key): it registers with each through CURVE, reads through
    either, and goes on through the other when one is killed."""
    from agent_stack import SERVER_CMD, Proc

    stack = Stack(tmp_path)
    (stack.root / "f").write_bytes(b"curve data")
    servers = []
    listen, publish = [], []
    try:
        for i in range(2):
            p = Proc(f"server{i}", [*SERVER_CMD, "--root", str(stack.root),
                                    "--state", str(tmp_path / f"state{i}"),
                                    "--listen", "tcp://127.0.0.1:*",
                                    "--publish", "tcp://127.0.0.1:*",
                                    "--bootstrap-key", str(stack.key),
                                    "--curve-secret", keys["server"][1], "--curve-clients",
                                    str(tmp_path / "clients")], tmp_path / f"server{i}.log")
            p.wait_ready()
            servers.append(p)
            out = p.output()
            listen.append(re.search(r"serving .* on (tcp://\S+)$", out, re.M).group(1))
            publish.append(re.search(r"invalidations on (tcp://\S+)", out).group(1))
        stack.server_ep = ",".join(listen)
        stack.start_agent("--subscribe", ",".join(publish), "--curve-secret", keys["agent"][1],
                          "--server-key", keys["server"][0])
        c = stack.client()
        for _ in range(4):  # each server answers in turn
            o = c.call(Open(path="/f", flags=os.O_RDONLY, mode=0))
            assert isinstance(o, Opened) and Path(o.host_path).read_bytes() == b"curve data"
            assert isinstance(c.call(Stat(path="/")), StatReply)
        servers[0].popen.kill()
        servers[0].popen.wait()
        for _ in range(4):
            assert isinstance(c.call(Stat(path="/f")), StatReply)
        assert stack.agent is not None and "Traceback" not in stack.agent.output()
    finally:
        stack.stop()
        for p in servers:
            p.stop()
