"""synthfs run by an unprivileged user (no CAP_SYS_PTRACE, no CAP_CHECKPOINT_RESTORE).

Everything else in the suite runs as root, where ``/proc/PID/map_files`` and a
non-dumpable guest's ``/proc/PID/fd`` are open to the supervisor; here they are
not (findings 07 and 08 of the twelfth outside review). As root, the tests
drop to uid/gid 65534 with ``setpriv``; as another user they run as that user.

The unprivileged user needs a Python it may run (the venv's may live under a
0700 home: then the system's of the same version) and readable sources: the
checkout and the venv's packages are used in place when that user can read
them, else their runtime files are copied to a temporary directory.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

NOBODY = 65534
#: the distributions a ``synthfs run`` imports (pyproject's dependencies)
RUNTIME = ("attrs", "msgpack", "pyzmq", "python-ptrace", "pyseccomp")
ENGINES = ("ptrace", "notify")


class Unprivileged:
    """How to run ``synthfs`` as the unprivileged user, in a directory it owns."""

    def __init__(self, root: Path, python: str, path: str) -> None:
        self.root = root
        self.python = python
        self.pythonpath = path
        self.drop = (
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            if os.geteuid() == 0
            else []
        )

    def env(self, home: Path) -> dict[str, str]:
        return {
            "HOME": str(home), "PATH": "/usr/bin:/bin", "LC_ALL": "C",
            "PYTHONPATH": self.pythonpath, "PYTHONDONTWRITEBYTECODE": "1",
            "TMPDIR": str(home), "XDG_RUNTIME_DIR": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".state"),
        }  # fmt: skip

    def run(self, argv: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.drop, "env", "-i", *(f"{k}={v}" for k, v in self.env(home).items()),
             *argv],
            capture_output=True, text=True, timeout=120, cwd=cwd,
        )  # fmt: skip

    def synthfs(self, engine: str, *args: str) -> list[str]:
        return [self.python, "-m", "synthfs", "run", "--engine", engine, *args]

    def own(self, path: Path) -> None:
        """Give ``path`` (and what is under it) to the unprivileged user."""
        if self.drop:
            for p in [path, *path.rglob("*")]:
                os.lchown(p, NOBODY, NOBODY)


def _python_candidates() -> Iterator[str]:
    yield os.path.realpath(sys.executable)
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    for d in ("/usr/bin", "/usr/local/bin"):
        yield f"{d}/python{v}"


def _copy_runtime(dest: Path) -> str:
    """Copies of the checkout's ``synthfs`` package and the runtime distributions."""
    shutil.copytree(Path(helpers.SOURCE or helpers.REPO) / "synthfs", dest / "synthfs",
                    ignore=shutil.ignore_patterns("__pycache__", "benchmarks"))  # fmt: skip
    for name in RUNTIME:
        dist = importlib.metadata.distribution(name)
        for f in dist.files or ():
            if f.parts[0] == ".." or f.parts[0].endswith(".dist-info") or "__pycache__" in f.parts:
                continue
            target = dest / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f.locate(), target)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644 | (p.stat().st_mode & 0o111))
    return str(dest)


@pytest.fixture(scope="module")
def nobody() -> Iterator[Unprivileged]:
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv (util-linux): cannot drop to uid 65534")
    reason = helpers.ptrace_unavailable_reason()
    if reason:
        pytest.skip(f"synthfs cannot run on this kernel: {reason}")
    root = Path(tempfile.mkdtemp(prefix="synthfs-nobody-"))
    root.chmod(0o755)
    try:
        site = str(importlib.metadata.distribution("attrs").locate_file(""))
        in_place = os.pathsep.join([str(helpers.SOURCE or helpers.REPO), site])
        probe = "import synthfs.cli, synthfs.interposer.supervisor, zmq, pyseccomp, ptrace"
        tried: list[str] = []
        for path in (in_place, None):
            if path is None:
                path = _copy_runtime(root / "runtime")
            for python in dict.fromkeys(_python_candidates()):
                if not os.path.exists(python):
                    continue
                u = Unprivileged(root, python, path)
                done = u.run([python, "-c", probe], root, root)
                if done.returncode == 0:
                    yield u
                    return
                tried.append(f"{python} with {path}: {done.stderr.strip().splitlines()[-1:]}")
        pytest.skip("no Python of this version that uid 65534 may run with synthfs's "
                    "packages: " + "; ".join(tried))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def place(nobody: Unprivileged) -> Path:
    """A fresh directory of the unprivileged user's: ``data/a.txt`` and ``home``."""
    d = Path(tempfile.mkdtemp(dir=nobody.root))
    (d / "data").mkdir()
    (d / "data" / "a.txt").write_text("hi\n")
    (d / "home").mkdir()
    nobody.own(d)
    return d


@pytest.mark.parametrize("engine", ENGINES)
def test_a_guest_execs_programs(nobody: Unprivileged, place: Path, engine: str) -> None:
    """Finding 07: every exec a guest made was killed ("the executable changed between
    the policy check and the exec"): the loader's identity came from
    ``/proc/PID/map_files``, which needs CAP_CHECKPOINT_RESTORE; now from ``maps``."""
    done = nobody.run(
        nobody.synthfs(engine, "-q", "--data", str(place / "data"), "--",
                       "sh", "-c", "id -u; cat /data/a.txt"),
        place / "home", place,
    )  # fmt: skip
    uid = NOBODY if nobody.drop else os.geteuid()
    assert (done.returncode, done.stdout) == (0, f"{uid}\nhi\n"), done.stderr
    assert "executable changed" not in done.stderr


GUEST = """\
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/data/a.txt", os.O_RDONLY)
def t(name, f):
    try:
        print(name, f())
    except OSError as e:
        print(name, errno.errorcode[e.errno])
t("set", lambda: libc.prctl(4, 0, 0, 0, 0))  # PR_SET_DUMPABLE 0
t("get", lambda: libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
t("bad", lambda: -ctypes.get_errno() if libc.prctl(4, 2, 0, 0, 0) else 0)  # EINVAL
t("fchmod", lambda: os.chmod(fd, 0o777))
t("fstat", lambda: os.fstat(fd).st_size)
t("stat", lambda: os.stat("/data/a.txt").st_size)
t("list", lambda: os.listdir("/data"))
"""

POLICY = """\
version = 1
name = "read-only"
default = "deny"
[[mount]]
path = "/data"
[[app]]
name = "all"
match.exe = ["/**"]
allow = [ { paths = ["/data", "/data/**"], ops = ["read", "stat", "list"] } ]
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_non_dumpable_guest_keeps_the_fd_rows(
    nobody: Unprivileged, place: Path, engine: str
) -> None:
    """Finding 08: after prctl(PR_SET_DUMPABLE, 0) the supervisor could not read the
    guest's fd links, took a /data fd for "not open" and let the kernel run fchmod on
    the agent's cache object (a chmod the policy denies). The supervisor answers that
    prctl itself now: fchmod gets the policy's EACCES, the fd rows work on."""
    (place / "guest.py").write_text(GUEST)
    (place / "policy.toml").write_text(POLICY)
    nobody.own(place)
    done = nobody.run(
        nobody.synthfs(engine, "-q", "--policy", str(place / "policy.toml"),
                       "--data", str(place / "data"), "--", nobody.python, str(place / "guest.py")),
        place / "home", place,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "set 0", "get 0", "bad -22", "fchmod EACCES", "fstat 3", "stat 3", "list ['a.txt']",
    ], done.stderr  # fmt: skip
    objects = [p for p in (place / "home").rglob("objects/*") if p.is_file()]
    assert objects and all(p.stat().st_mode & 0o777 != 0o777 for p in objects)
