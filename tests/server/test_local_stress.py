"""Many threads on one LocalBackend: every backend operation against renames and removes.

The server's workers share one process, so one fd number closed twice (or used
after its close) may by then be another worker's fd: a read of a file nobody
touches then answers EBADF, EISDIR or another object's bytes. Here worker
threads mix every backend operation on *churn* names (renamed, removed,
truncated, rewritten by other threads) with operations on *stable* objects no
thread changes, and check every stable reply against the real content. The
churn replies may fail only with the errnos a racing rename or remove explains,
and a churn read answers bytes one of its writers wrote.

CI runs ``STRESS_S`` seconds; ``-m slow`` runs ``SLOW_STRESS_S``.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from pathlib import Path

import pytest

from synthfs.server.backends.local import LocalBackend

STRESS_S = 4.0
SLOW_STRESS_S = 60.0
THREADS = 12
STABLE = {f"/stable/s{i}": bytes([65 + i]) * (100 + 37 * i) for i in range(8)}
CHURN = [f"/churn/c{i}" for i in range(4)]
#: what a racing rename, remove, truncate or create explains on a churn name
RACE_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ESTALE, errno.ENOTEMPTY, errno.EIO,
               errno.ENOTDIR, errno.EISDIR}


def _content_ok(data: bytes) -> bool:
    """A churn file holds one repeated letter, possibly zero-extended by a truncate."""
    body = data.rstrip(b"\0")
    return not body or (body == body[:1] * len(body) and body[:1].isalpha())


class _Worker:
    def __init__(self, b: LocalBackend, seed: int, stop: float) -> None:
        self.b, self.rng, self.stop = b, random.Random(seed), stop
        self.errors: list[str] = []
        self.ops = 0
        self.seed = seed

    def stable(self) -> None:
        path, want = self.rng.choice(list(STABLE.items()))
        op = self.rng.randrange(5)
        if op == 0:
            data, eof, _ = self.b.read(path, 0, 65536)
            if data != want or not eof:
                self.errors.append(f"read {path}: {data[:20]!r}... ({len(data)} bytes)")
        elif op == 1:
            a = self.b.stat(path)
            if a.size != len(want) or a.kind != "file":
                self.errors.append(f"stat {path}: {a}")
        elif op == 2:
            _own, entries = self.b.list("/stable")
            names = sorted(e.name for e in entries)
            if names != sorted([*(p.rsplit("/", 1)[1] for p in STABLE), "link"]):
                self.errors.append(f"list /stable: {names}")
        elif op == 3:
            if self.b.readlink("/stable/link") != "s0":
                self.errors.append("readlink /stable/link")
        else:
            a = self.b.setattr(path, mode=0o644)
            if a.size != len(want):
                self.errors.append(f"setattr {path}: {a}")

    def churn(self) -> None:
        rng, b = self.rng, self.b
        path = rng.choice(CHURN)
        op = rng.randrange(9)
        letter = bytes([rng.randrange(97, 123)])
        if op == 0:
            data, _eof, _v = b.read(path, 0, 65536)
            if not _content_ok(data):
                self.errors.append(f"read {path}: {data[:40]!r}")
        elif op == 1:
            b.rename(path, rng.choice(CHURN))
        elif op == 2:
            b.remove(path)
        elif op == 3:
            b.setattr(path, size=rng.randrange(0, 3000))
        elif op == 4:
            uid = f"{self.seed}-{self.ops}"
            n = rng.randrange(0, 5000)
            if n:
                b.upload_chunk(uid, 0, letter * n)
            b.upload_commit(uid, path, n)
        elif op == 5:
            b.stat(path)
        elif op == 6:
            b.setattr(path, mtime_ns=rng.randrange(10**18))
        elif op == 7:
            b.list("/churn")
        else:
            b.symlink("s0", path)

    def run(self) -> None:
        while time.monotonic() < self.stop:
            self.ops += 1
            try:
                self.stable()
            except Exception as exc:  # a stable object must never fail
                self.errors.append(f"stable op: {type(exc).__name__}: {exc}")
            try:
                self.churn()
            except OSError as exc:
                if exc.errno not in RACE_ERRNOS and exc.errno != errno.ELOOP:
                    self.errors.append(f"churn op: {exc!r}")
            except Exception as exc:
                self.errors.append(f"churn op: {type(exc).__name__}: {exc}")
            if len(self.errors) > 20:
                return


def _stress(tmp_path: Path, seconds: float, use_openat2: bool) -> None:
    root = tmp_path / "repo"
    (root / "stable").mkdir(parents=True)
    (root / "churn").mkdir()
    for path, data in STABLE.items():
        (root / path[1:]).write_bytes(data)
    os.symlink("s0", root / "stable" / "link")
    # Truncation is atomic (rename of a staged copy) below this size: the path that
    # closes and reopens an fd, racing the renames.
    b = LocalBackend(root, use_openat2=use_openat2, atomic_truncate_max=1 << 20)
    try:
        stop = time.monotonic() + seconds
        workers = [_Worker(b, seed, stop) for seed in range(THREADS)]
        threads = [threading.Thread(target=w.run) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        assert not any(t.is_alive() for t in threads), "a worker hung"
        errors = [e for w in workers for e in w.errors]
        ops = sum(w.ops for w in workers)
        print(f"{ops} rounds in {seconds:g} s, {len(errors)} errors")
        assert not errors, errors[:20]
        # Still whole afterwards: every stable object as it was.
        for path, data in STABLE.items():
            assert (root / path[1:]).read_bytes() == data
    finally:
        b.close()


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_every_operation_against_renames_and_removes(tmp_path: Path, use_openat2: bool) -> None:
    _stress(tmp_path, STRESS_S / 2, use_openat2)


@pytest.mark.slow
def test_every_operation_against_renames_and_removes_long(tmp_path: Path) -> None:
    _stress(tmp_path, SLOW_STRESS_S, True)
