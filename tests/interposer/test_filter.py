"""``interposer/filter.py``: the compiled-filter cache gives the very program libseccomp gives.

Pure file-system units (no ptrace): a program from the cache is byte for byte
the one compiled for the same rules; a run whose rules were compiled before
does not load pyseccomp (its import runs ``ldconfig`` twice); a damaged,
foreign or loosely-protected entry or directory is never used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthfs.interposer import filter as flt
from synthfs.interposer.filter import build_filter
from synthfs.policy.engine import Policy
from synthfs.policy.shipped import locate


def _policies() -> list[Policy | None]:
    """Every row; the default's; ci.toml's ([host] rules, loopback only: every row too)."""
    ci = Policy.from_toml(locate("ci"), env={"WORKSPACE": "/tmp/ws"})
    return [None, Policy.default("/data"), ci]


@pytest.mark.parametrize("which", range(3), ids=["every-row", "default", "host-rules"])
def test_a_cached_program_is_the_compiled_one(tmp_path: Path, which: int) -> None:
    policy = _policies()[which]
    cache = tmp_path / "filters"
    compiled = build_filter(policy).bpf
    first = build_filter(policy, str(cache))  # compiled, then stored
    (entry,) = cache.iterdir()
    second = build_filter(policy, str(cache))  # read back
    assert first.bpf == second.bpf == compiled
    assert first.gates == second.gates
    assert os.stat(cache).st_mode & 0o7777 == 0o700
    assert os.stat(entry).st_mode & 0o777 == 0o600


def test_the_rules_name_the_entry(tmp_path: Path) -> None:
    cache = tmp_path / "filters"
    policies = _policies()
    for policy in policies:
        build_filter(policy, str(cache))
    rule_sets = {flt.active_gates(p) for p in policies}
    assert len(rule_sets) == 2  # ci.toml needs every row, as None does
    assert len(list(cache.iterdir())) == len(rule_sets)


def test_a_warm_build_does_not_load_libseccomp(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from synthfs.interposer.filter import build_filter\n"
        f"build_filter(None, {str(tmp_path / 'filters')!r})\n"
        "print('pyseccomp' in sys.modules, 'subprocess' in sys.modules)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert runs == ["True True\n", "False False\n"]


def _entry(cache: Path) -> Path:
    (entry,) = cache.iterdir()
    return entry


#: a complete classic-BPF program of one instruction, ``RET SECCOMP_RET_ALLOW``: the
#: program an attacker would plant (nothing trapped, nothing refused)
ALLOW_ALL = bytes.fromhex("06000000") + (0x7FFF0000).to_bytes(4, "little")


@pytest.mark.parametrize("damage", ["planted", "truncated", "loose-mode", "symlink", "empty"])
def test_a_damaged_or_planted_entry_is_compiled_again(tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "filters"
    good = build_filter(None, str(cache)).bpf
    entry = _entry(cache)
    if damage == "planted":  # a program with a checksum that is not ours
        entry.write_bytes(ALLOW_ALL + bytes(32))
    elif damage == "truncated":  # a prefix of the program, its checksum left off
        entry.write_bytes(entry.read_bytes()[:64])
    elif damage == "loose-mode":  # the right bytes, but another user could have written them
        entry.chmod(0o644)
    elif damage == "symlink":
        other = tmp_path / "other.bpf"
        other.write_bytes(entry.read_bytes())
        other.chmod(0o600)
        entry.unlink()
        entry.symlink_to(other)
    else:
        entry.write_bytes(b"")
    assert build_filter(None, str(cache)).bpf == good
    if damage in ("planted", "truncated", "symlink", "empty"):  # rewritten whole
        assert not entry.is_symlink() and flt._cached(str(entry), entry.stem) == good


def test_a_directory_others_may_enter_is_not_used(tmp_path: Path) -> None:
    cache = tmp_path / "filters"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    assert build_filter(None, str(cache)).bpf == build_filter(None).bpf
    assert list(cache.iterdir()) == []  # nothing stored where others may look or write
    planted = tmp_path / "elsewhere"
    planted.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(planted)
    assert build_filter(None, str(link)).bpf == build_filter(None).bpf
    assert list(planted.iterdir()) == []  # a symlinked directory is not ours either
