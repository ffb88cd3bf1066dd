"""Fixtures shared by every test directory: kept small and generic.

``synthfs`` gives a :class:`helpers.SynthfsLauncher` and skips only when the
kernel itself cannot ptrace or seccomp (anything else that breaks
``synthfs run`` must show up as a failure, not a skip).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `import helpers`
if os.environ.get("SYNTHFS_TEST_SOURCE"):  # test another checkout's synthfs (see helpers)
    sys.path.insert(0, os.environ["SYNTHFS_TEST_SOURCE"])

import helpers

# A server's default state directory is under $XDG_STATE_HOME: keep the tests' own in a
# private directory (subprocess servers inherit it), never in the user's home.
if "SYNTHFS_TEST_KEEP_STATE_HOME" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="synthfs-test-state-")
    atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)

@functools.cache
def _kernel_reason() -> str | None:
    return helpers.ptrace_unavailable_reason()


@pytest.fixture
def synthfs() -> helpers.SynthfsLauncher:
    """How to run a command under ``synthfs run`` (``SYNTHFS_TEST_MODE=data|agent``)."""
    reason = _kernel_reason()
    if reason:
        pytest.skip(f"synthfs cannot run on this kernel: {reason}")
    return helpers.SynthfsLauncher()


@pytest.fixture(scope="session")
def seaweed():
    """A real S3 store for the session: SeaweedFS on free loopback ports in a temp dir.

    A :class:`synthfs.testing.seaweed.Seaweed`: ``.endpoint``, ``.env()`` (the AWS
    credentials for a child process), ``.client()`` (boto3), ``.new_bucket()`` (a fresh
    empty bucket). Fails (never skips) when ``weed`` is missing: ``.ci/setup`` installs it.
    """
    from synthfs.testing.seaweed import Seaweed

    store = Seaweed().start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def s3_env(seaweed, monkeypatch):
    """This process's AWS credentials point at ``seaweed`` for the test (the standard chain)."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return seaweed
