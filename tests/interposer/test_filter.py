"""interposer.filter's kept filter (cached_filter): the same BPF as a compile, from a place
and a file no one else can write, never an entry compiled from other inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthfs.interposer import filter as flt
from synthfs.interposer.filter import build_filter, cached_filter
from synthfs.interposer.notify import Engine
from synthfs.policy.engine import Policy


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)  # the parent is checked too
    return tmp_path / "filters"


def _compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the compilations from here on."""
    calls: list[int] = []
    real = flt._compile

    def counted(*args: object) -> bytes:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(flt, "_compile", counted)
    return calls


def _entry(cache: Path) -> Path:
    (entry,) = cache.iterdir()
    return entry


def test_kept_once_then_read_and_equal_to_a_compile(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = Policy.default("/data")
    want = build_filter(policy, Engine.PTRACE)
    want_notify = build_filter(policy, Engine.NOTIFY)
    calls = _compiles(monkeypatch)
    first = cached_filter(policy, Engine.PTRACE, str(cache))
    second = cached_filter(policy, Engine.PTRACE, str(cache))
    assert first.bpf == second.bpf == want.bpf and first.gates == want.gates
    assert len(calls) == 1
    assert cache.stat().st_mode & 0o777 == 0o700
    assert _entry(cache).stat().st_mode & 0o777 == 0o600
    # Another engine (or other gates) is another entry, never this one.
    other = cached_filter(policy, Engine.NOTIFY, str(cache))
    assert other.bpf == want_notify.bpf != first.bpf
    assert len(calls) == 2 and len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("how", ["dir-0755", "parent-0755", "entry-0664", "symlink", "stale",
                                 "torn", "foreign-rows"])
def test_an_entry_that_cannot_be_trusted_is_compiled_again(
    how: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = Policy.default("/data")
    good = cached_filter(policy, Engine.PTRACE, str(cache)).bpf
    entry = _entry(cache)
    # What a writer other than synthfs would leave: an allow-all program (ret ALLOW).
    allow_all = b"\x06\x00\x00\x00\x00\x00\xff\x7f"
    header = entry.read_bytes().partition(b"\n\n")[0]
    entry.write_bytes(header + b"\n\n" + allow_all)
    if how == "dir-0755":
        cache.chmod(0o755)
    elif how == "parent-0755":
        tmp_path.chmod(0o755)
    elif how == "entry-0664":
        entry.chmod(0o664)
    elif how == "symlink":
        target = tmp_path / "elsewhere"
        target.write_bytes(entry.read_bytes())
        entry.unlink()
        entry.symlink_to(target)
    elif how == "stale":  # libseccomp (or pyseccomp) changed since it was compiled
        entry.write_bytes(header.replace(b" ", b" 1", 1) + b"\n\n" + allow_all)
    elif how == "torn":
        entry.write_bytes(header + b"\n\n" + good[:-3])
    elif how == "foreign-rows":  # a table with another row names another entry
        os.rename(entry, entry.with_name("0" * 64 + ".bpf"))
    calls = _compiles(monkeypatch)
    assert cached_filter(policy, Engine.PTRACE, str(cache)).bpf == good
    assert len(calls) == 1


def test_the_name_is_a_digest_of_every_input(monkeypatch: pytest.MonkeyPatch) -> None:
    gates = flt.active_gates(Policy.default("/data"))
    base = flt._digest(gates, Engine.PTRACE)
    assert flt._digest(gates, Engine.PTRACE) == base
    assert flt._digest(flt.active_gates(None), Engine.PTRACE) != base
    assert flt._digest(gates, Engine.NOTIFY) != base
    row = flt.TABLE[0]
    monkeypatch.setattr(flt, "TABLE", (row.__class__(**{**_fields(row), "errno": 99}),
                                       *flt.TABLE[1:]))
    assert flt._digest(gates, Engine.PTRACE) != base


def _fields(row: object) -> dict[str, object]:
    import attrs

    return attrs.asdict(row, recurse=False)  # type: ignore[arg-type]
