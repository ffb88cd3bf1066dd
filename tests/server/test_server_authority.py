"""Unit tests of server.auth (no sockets): key file, mac, tokens, revocation."""

from __future__ import annotations

import errno
import os
import time

import pytest

from synthfs.protocol.messages import PROTOCOL_VERSION, Register
from synthfs.server.auth import AuthError, Authority, load_or_create_key, register_mac
from synthfs.server.main import check_endpoint

KEY = b"k" * 64


def _reg(nonce: str = "n", ts: int | None = None, key: bytes = KEY, agent: str = "a") -> Register:
    ts = time.time_ns() if ts is None else ts
    return Register(version=PROTOCOL_VERSION, agent_id=agent, nonce=nonce, timestamp_ns=ts,
                    mac=register_mac(key, agent, nonce, ts))


def test_mac_is_hmac_sha256_of_the_documented_string():
    import hashlib
    import hmac

    assert register_mac(b"key", "agent", "nonce", 42) == hmac.new(
        b"key", b"agent|nonce|42", hashlib.sha256).hexdigest()


def test_token_lifecycle():
    auth = Authority(KEY, "repo", token_ttl_s=10)
    reg = auth.register(_reg())
    assert reg.repo_id == "repo"
    assert auth.check(reg.token).token_id == reg.token_id
    with pytest.raises(AuthError) as ei:
        auth.check(reg.token, now_ns=reg.expires_at_ns)
    assert ei.value.errno == errno.EKEYEXPIRED
    with pytest.raises(AuthError) as ei:
        auth.check(reg.token[:-1] + ("A" if reg.token[-1] != "A" else "B"))
    assert ei.value.errno == errno.EKEYREJECTED
    with pytest.raises(AuthError) as ei:
        auth.check("")
    assert ei.value.errno == errno.EKEYREJECTED


def test_revoked_token_is_rejected():
    auth = Authority(KEY, "repo")
    a, b = auth.register(_reg("1")), auth.register(_reg("2"))
    assert auth.revoke(a.token_id)
    assert not auth.revoke("unknown")
    with pytest.raises(AuthError) as ei:
        auth.check(a.token)
    assert ei.value.errno == errno.EKEYREJECTED
    auth.check(b.token)
    assert auth.revoke_all() == 1
    with pytest.raises(AuthError):
        auth.check(b.token)


def test_registration_refusals():
    auth = Authority(KEY, "repo")
    for bad in (_reg(key=b"x" * 64), _reg(ts=time.time_ns() - 200 * 10**9), _reg(nonce="")):
        with pytest.raises(AuthError) as ei:
            auth.register(bad)
        assert ei.value.errno == errno.EACCES
    auth.register(_reg("once"))
    with pytest.raises(AuthError):
        auth.register(_reg("once"))
    with pytest.raises(AuthError) as ei:
        auth.register(Register(version=99, agent_id="a", nonce="v", timestamp_ns=1, mac=""))
    assert ei.value.errno == errno.EPROTONOSUPPORT


def test_secrets_stay_out_of_reprs():
    auth = Authority(KEY, "repo")
    reg = auth.register(_reg())
    session = auth.check(reg.token)
    for obj in (auth, reg, session):
        assert reg.token not in repr(obj)
        assert KEY.decode() not in repr(obj)


def test_key_file(tmp_path):
    path = tmp_path / "sub" / "key"
    key, created = load_or_create_key(str(path))
    assert created and len(key) == 64 and os.stat(path).st_mode & 0o777 == 0o600
    assert load_or_create_key(str(path)) == (key, False)
    os.chmod(path, 0o604)
    with pytest.raises(PermissionError, match="group or others"):
        load_or_create_key(str(path))
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(PermissionError, match="too short"):
        load_or_create_key(str(path))
    os.symlink(path, tmp_path / "link")
    with pytest.raises(OSError):
        load_or_create_key(str(tmp_path / "link"))


@pytest.mark.parametrize("ep", ["ipc:///tmp/x.sock", "tcp://127.0.0.1:5", "tcp://127.0.0.1:*",
                                "tcp://[::1]:5", "tcp://localhost:5"])
def test_loopback_endpoints_are_accepted(ep):
    check_endpoint(ep, curve=False)


@pytest.mark.parametrize("ep", ["tcp://0.0.0.0:5", "tcp://*:5", "tcp://10.0.0.1:5",
                                "tcp://eth0:5", "inproc://x", "ipc://", "tcp://127.0.0.1"])
def test_other_endpoints_are_refused(ep):
    with pytest.raises(ValueError):
        check_endpoint(ep, curve=False)


def test_remote_tcp_needs_curve():
    check_endpoint("tcp://0.0.0.0:5", curve=True)
    check_endpoint("tcp://10.0.0.1:5", curve=True)
    with pytest.raises(ValueError, match="needs CURVE"):
        check_endpoint("tcp://10.0.0.1:5", curve=False)


def test_a_registration_older_than_the_process_is_refused_within_the_skew_window():
    now = time.time_ns()
    started_long_ago = Authority(KEY, "repo", boot_ns=now - 3600 * 10**9)
    started_long_ago.register(_reg("old-but-in-window", ts=now - 100 * 10**9))
    just_started = Authority(KEY, "repo", boot_ns=now)
    with pytest.raises(AuthError) as ei:
        just_started.register(_reg("captured", ts=now - 100 * 10**9))
    assert ei.value.errno == errno.ESTALE
