"""Registration, tokens and start-up checks, against a real server process."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import time

from server_harness import REPO, RawClient, ServerProc, make_key, register

from synthfs.protocol.codec import encode
from synthfs.protocol.messages import (
    PROTOCOL_VERSION,
    Error,
    Mkdir,
    Register,
    Registered,
    Stat,
    StatReply,
    UploadCommit,
)
from synthfs.server.auth import register_mac


def _err(reply) -> int:
    assert isinstance(reply, Error), reply
    return reply.errno


def test_register_gives_a_token(srv):
    c = srv.client(registered=False)
    reply = register(c, srv.key)
    assert isinstance(reply, Registered)
    assert len(reply.token) >= 40 and reply.token_id and reply.token_id not in reply.token
    assert reply.expires_at_ns > time.time_ns() + 3000 * 10**9
    real = os.path.realpath(srv.root)
    assert reply.repo_id == hashlib.sha256(real.encode()).hexdigest()[:16]
    assert isinstance(c.call(Stat(path="/")), StatReply)
    assert reply.token not in srv.proc.output()  # never logged


def test_two_registrations_get_different_tokens(srv):
    a, b = srv.client(), srv.client()
    assert a.token != b.token


def test_bad_mac_is_refused(srv):
    c = srv.client(registered=False)
    reply = register(c, srv.key, mac="00" * 32)
    assert _err(reply) == errno.EACCES
    reply = register(c, b"not the key at all, not at all")
    assert _err(reply) == errno.EACCES
    assert not c.token


def test_replayed_nonce_is_refused(srv):
    c = srv.client(registered=False)
    ts = time.time_ns()
    assert isinstance(register(c, srv.key, nonce="n-1", ts=ts), Registered)
    assert _err(register(c, srv.key, nonce="n-1", ts=ts)) == errno.EACCES
    assert _err(register(c, srv.key, agent_id="other", nonce="n-1")) == errno.EACCES


def test_stale_or_future_timestamp_is_refused(srv):
    c = srv.client(registered=False)
    now = time.time_ns()
    assert _err(register(c, srv.key, ts=now - 121 * 10**9)) == errno.EACCES
    assert _err(register(c, srv.key, ts=now + 121 * 10**9)) == errno.EACCES
    assert isinstance(register(c, srv.key, ts=now + 100 * 10**9), Registered)
    # (100 s in the past passes too, on a server that has run for longer:
    # tests/server/test_server_authority.py)


def test_a_registration_made_before_the_server_started_is_refused(make_server):
    """The replay cache is in memory: a Register captured before a restart (within
    the ±120 s window) must not buy a token from the new process."""
    before = time.time_ns()
    srv = make_server()
    c = srv.client(registered=False)
    reply = register(c, srv.key, ts=before - 10**9)
    assert _err(reply) == errno.ESTALE, reply
    assert "older than the server's start" in reply.message
    assert isinstance(register(c, srv.key), Registered)


def test_refused_registrations_are_logged_at_a_bounded_rate(srv):
    c = srv.client(registered=False)
    for _ in range(300):
        assert _err(register(c, b"not the key at all, not at all")) == errno.EACCES
    log = srv.proc.output()
    assert log.count("refused: bad mac") <= 25, log.count("refused: bad mac")


def test_missing_or_wrong_token_does_nothing(srv):
    c = srv.client(registered=False)
    assert _err(c.call(Mkdir(path="/made"), token="")) == errno.EKEYREJECTED
    assert _err(c.call(Mkdir(path="/made"), token="x" * 43)) == errno.EKEYREJECTED
    assert _err(c.call(UploadCommit(upload_id="u", path="/f", size=0), token="nope")) == (
        errno.EKEYREJECTED)
    assert sorted(os.listdir(srv.root)) == []


def test_expired_token_does_nothing(make_server):
    srv = make_server("--token-ttl", "1")
    c = srv.client()
    assert isinstance(c.call(Stat(path="/")), StatReply)
    time.sleep(1.2)
    assert _err(c.call(Mkdir(path="/made"))) == errno.EKEYEXPIRED
    assert _err(c.call(UploadCommit(upload_id="u", path="/f", size=0))) == errno.EKEYEXPIRED
    assert not (srv.root / "made").exists() and not (srv.root / "f").exists()
    register(c, srv.key)  # a fresh registration works again
    assert isinstance(c.call(Mkdir(path="/made")), StatReply)
    assert (srv.root / "made").is_dir()


def test_token_of_a_previous_server_is_rejected(make_server, tmp_path):
    srv = make_server()
    c = srv.client()
    srv.proc.stop()
    srv2 = make_server(root=srv.root)
    c2 = RawClient(srv2.endpoint, token=c.token)
    try:
        assert _err(c2.call(Stat(path="/"))) == errno.EKEYREJECTED
    finally:
        c2.close()


def test_key_file_is_created_private(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    key_path = tmp_path / "conf" / "bootstrap.key"
    p = ServerProc(root, key_path, f"ipc://{tmp_path}/s.sock").start()
    try:
        st = os.stat(key_path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        key = key_path.read_bytes().strip()
        assert len(key) == 64 and bytes.fromhex(key.decode())
        c = RawClient(p.bound)
        try:
            assert isinstance(register(c, key), Registered)
        finally:
            c.close()
        assert key.decode() not in p.output()
    finally:
        p.stop()


def _run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synthfs.server", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_group_readable_key_is_refused(tmp_path):
    key_path = tmp_path / "k"
    make_key(key_path)
    os.chmod(key_path, 0o640)
    (tmp_path / "repo").mkdir()
    r = _run_server("--root", str(tmp_path / "repo"), "--listen", f"ipc://{tmp_path}/s.sock",
                    "--bootstrap-key", str(key_path))
    assert r.returncode == 2
    assert "group or others can access it" in r.stderr and "0640" in r.stderr


def test_non_loopback_listen_is_refused(tmp_path):
    make_key(tmp_path / "k")
    (tmp_path / "repo").mkdir()
    for ep in ("tcp://0.0.0.0:5999", "tcp://*:5999", "inproc://x", "udp://1.2.3.4:5"):
        r = _run_server("--root", str(tmp_path / "repo"), "--listen", ep,
                        "--bootstrap-key", str(tmp_path / "k"))
        assert r.returncode == 2, ep
        assert "error" in r.stderr


def test_tcp_loopback_with_any_port(make_server):
    srv = make_server(endpoint="tcp://127.0.0.1:*")
    assert srv.endpoint.startswith("tcp://127.0.0.1:") and not srv.endpoint.endswith("*")
    c = srv.client()
    assert isinstance(c.call(Stat(path="/")), StatReply)


def test_ipc_socket_is_private_and_removed_on_sigterm(srv):
    path = srv.endpoint[len("ipc://"):]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert srv.proc.stop() == 0
    assert not os.path.exists(path)
    assert "synthfs server: serving" in srv.proc.output()


def test_default_key_path_is_under_xdg_config_home(tmp_path):
    (tmp_path / "repo").mkdir()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "synthfs.server", "--root", str(tmp_path / "repo"),
                          "--listen", f"ipc://{tmp_path}/s.sock", "--ready-fd", str(w)],
                         cwd=REPO, env=env, pass_fds=[w], stderr=subprocess.PIPE, text=True)
    os.close(w)
    try:
        assert os.read(r, 16) == b"ready\n"
        key = tmp_path / "xdg" / "synthfs" / "bootstrap.key"
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    finally:
        os.close(r)
        p.terminate()
        _out, err = p.communicate(timeout=15)
    assert p.returncode == 0
    lines = err.splitlines()
    assert f"created bootstrap key {key}" in lines[0]
    assert lines[-1] == f"synthfs server: serving {tmp_path / 'repo'} on ipc://{tmp_path}/s.sock"


# -- replayed and forged tokens -------------------------------------------------------------


def test_old_token_after_reregistration_is_refused(srv):
    """An agent registering again (expiry, restart) makes its previous token worthless."""
    c = srv.client(registered=False)
    assert isinstance(register(c, srv.key, agent_id="agent-1"), Registered)
    old = c.token
    other = srv.client(registered=False)
    assert isinstance(register(other, srv.key, agent_id="agent-2"), Registered)
    assert isinstance(register(c, srv.key, agent_id="agent-1"), Registered)
    assert c.token != old
    assert _err(c.call(Mkdir(path="/replayed"), token=old)) == errno.EKEYREJECTED
    assert _err(c.call(Stat(path="/"), token=old)) == errno.EKEYREJECTED
    assert not (srv.root / "replayed").exists()
    assert isinstance(c.call(Stat(path="/")), StatReply)  # the new token works
    assert isinstance(other.call(Stat(path="/")), StatReply)  # another agent's is untouched


def test_replayed_register_frame_is_refused(srv):
    """A Register captured on the wire and sent again byte for byte gets no token."""
    c = srv.client(registered=False)
    nonce, ts = "captured-nonce", time.time_ns()
    mac = register_mac(srv.key, "agent-x", nonce, ts)
    frame = encode(Register(version=PROTOCOL_VERSION, agent_id="agent-x", nonce=nonce,
                            timestamp_ns=ts, mac=mac), 41)
    c.sock.send(frame)
    assert isinstance(c.recv()[1], Registered)
    c.sock.send(frame)
    assert _err(c.recv()[1]) == errno.EACCES


def test_forged_tokens_are_refused(srv):
    """Near misses of a live token, its public id, its digest, odd characters: all refused."""
    c = srv.client()
    token = c.token
    reply = register(srv.client(registered=False), srv.key)
    assert isinstance(reply, Registered)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    forged = [flipped, token[:-1], token + "A", token.upper(), " " + token, token + "\x00",
              reply.token_id, hashlib.sha256(token.encode()).hexdigest(), "\udcff" * 10,
              "é" * 43, token[::-1]]
    for bad in forged:
        try:
            answer = c.call(Mkdir(path="/forged"), token=bad)
        except ValueError:  # a token the codec cannot encode never leaves the client
            continue
        assert _err(answer) == errno.EKEYREJECTED, bad
    assert _err(c.call(Stat(path="/"), token="t" * 2000)) == errno.EBADMSG  # over 1024: a bad frame
    assert not (srv.root / "forged").exists()
    assert isinstance(c.call(Stat(path="/")), StatReply)
