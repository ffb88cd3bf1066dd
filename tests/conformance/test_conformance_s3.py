"""Conformance on the S3 backend: the same cases, /data served from a SeaweedFS bucket.

Each case's starting tree is built natively, copied into a fresh prefix of a
bucket (modes, mtimes, symlinks kept), and served by a real ``synthfs server
--s3`` and agent; the guest runs with ``--agent``; the resulting repository is
copied back and compared whole with the native run, as in test_conformance.py.

CI (``-m 'not slow'``) runs every case: each starts its own server and agent (a
server serves one prefix, so a fresh prefix needs a fresh server): the 118 took
10.6 min (5 min of CPU) on a shared 2-CPU machine at load ~8, bigdir 2-3.5 min
of it (its 3,000 files pushed into the bucket). What an object store cannot
hold diverges on purpose (:data:`S3_DIVERGES`: hard links, names that are not
UTF-8...).
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import helpers
import pytest
from conformance_cases import CASES, Case, compare, env_for, finish, run_case_native

from synthfs.server.backends.s3 import S3Backend
from synthfs.testing.s3stack import pull_tree, push_tree, s3_stack

pytestmark = pytest.mark.ptrace

#: Cases where an S3 repository answers otherwise than a local file system, and why.
S3_DIVERGES: dict[str, str] = {
    "ln_hard": "an S3 repository holds no hard links: link(2) is EPERM",
    "ln_hard_tools": "an S3 repository holds no hard links: link(2) is EPERM",
    "py_links": "an S3 repository holds no hard links: link(2) is EPERM",
    "py_inodes": "its script makes a hard link (link(2) is EPERM on S3) and stops there "
                 "(with the link made a copy, its output and tree are the native ones)",
    "odd_names": "its starting tree holds what S3 cannot: names that are not UTF-8 "
                 "(EILSEQ) and a path of 1,500 bytes (a key holds 1,024: ENAMETOOLONG)",
    "py_raw_names": "an S3 repository holds UTF-8 names only (others are EILSEQ)",
    "du_tree": "objects are dense: a sparse file's blocks are its size's",
    "sparse_write": "objects are dense: a sparse file's blocks are its size's (stat %b, du)",
    "py_blocks": "objects are dense (a sparse file's blocks are its size's), and a "
                 "directory has no blocks",
}
#: Cases that fail on S3 on a loaded machine and may pass on a quieter one (not strict).
#: (bigdir was one until the server noted a listing that runs long: its first listing of
#: 3,000 entries, a LIST and 3,000 HEADs, outlasted the agent's 5 s at load ~15.)
S3_SLOW: dict[str, str] = {}

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def bucket(seaweed):
    return seaweed.new_bucket("conf")


def run_case_s3(case: Case, base: Path, outside: Path, home: Path, seaweed, bucket: str,
                synthfs: helpers.SynthfsLauncher) -> object:
    seed, pulled = base / "seed", base / "repo"
    seed.mkdir(parents=True)
    case.tree(seed)
    prefix = f"{case.name}-{next(_prefixes)}"
    be = S3Backend(seaweed.endpoint, bucket, prefix, state=base / "push-state")
    try:
        push_tree(seed, be)
        with s3_stack(seaweed.endpoint, bucket, prefix, seaweed.env()) as stack:
            out = helpers.run_native(
                [*helpers.synthfs_command(), "run", "--agent", stack.agent_endpoint, "--",
                 *case.render(helpers.MOUNT)],
                cwd=outside, env=env_for(home), umask=case.umask)
        pull_tree(be, pulled)
    finally:
        be.close()
    return finish(case, out, helpers.MOUNT, pulled, repo=True)


def _params():
    for c in CASES:
        marks = []
        reason = S3_DIVERGES.get(c.name) or c.diverges
        if reason:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        elif c.name in S3_SLOW:
            marks.append(pytest.mark.xfail(strict=False, reason=S3_SLOW[c.name]))
        yield pytest.param(c, marks=marks, id=c.name)


@pytest.mark.parametrize("case", list(_params()))
def test_conformance_s3(case: Case, tmp_path: Path, synthfs: helpers.SynthfsLauncher,
                        s3_env, bucket) -> None:
    missing = [t for t in case.needs if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (add to .ci/setup to run this case)")
    outside, home = tmp_path / "outside", tmp_path / "home"
    outside.mkdir()
    home.mkdir()
    native = run_case_native(case, tmp_path / "native", outside, home)
    guest = run_case_s3(case, tmp_path / "s3", outside, home, s3_env, bucket, synthfs)
    problems = compare(case, native, guest, "synthfs on S3")
    assert not problems, f"case {case.name}\n" + "\n".join(problems)
