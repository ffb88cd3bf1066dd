"""Shared machinery for the conformance and escape suites.

Trusts nothing it compares: both sides of a comparison are snapshots taken
from the host file system after the programs have exited.

* :func:`snapshot` / :func:`diff_trees` — walk a directory into a comparable
  map (names, types, contents, symlink targets, permission bits; times only
  on request) and describe every difference.
* :func:`normalise_paths` — the native root <-> ``/data`` mapping.
* :class:`SynthfsLauncher` — how a test runs a command under ``synthfs run``:
  ``--data DIR`` per call (mode ``data``, the default) or an embedded stack
  per repository plus ``--agent ENDPOINT`` (mode ``agent``). Switch with the
  environment variable ``SYNTHFS_TEST_MODE``; ``SYNTHFS_ENGINE`` (``notify``)
  passes ``--engine`` to every run; ``SYNTHFS_WRITE_BACK=1`` gives every
  ``--data`` run a write-back agent (``--write-back``).
* :func:`ptrace_unavailable_reason` — why this kernel cannot run synthfs at
  all (the only reason the synthfs side may skip rather than fail).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MOUNT",
    "REPO",
    "SYNTHFS",
    "Entry",
    "Outcome",
    "SynthfsLauncher",
    "diff_trees",
    "normalise_paths",
    "ptrace_unavailable_reason",
    "run_native",
    "snapshot",
    "synthfs_command",
]

REPO = Path(__file__).resolve().parent.parent
SYNTHFS = REPO / ".venv" / "bin" / "synthfs"
if not SYNTHFS.exists():  # a venv elsewhere: the synthfs beside the running python
    SYNTHFS = Path(sys.executable).with_name("synthfs")
#: ``SYNTHFS_TEST_SOURCE=/path/to/checkout`` runs synthfs from another checkout
#: (e.g. ``git archive HEAD | tar -x -C /tmp/wt``: test a commit while the shared
#: checkout is mid-edit). tests/conftest.py puts it first on sys.path too.
SOURCE = os.environ.get("SYNTHFS_TEST_SOURCE")
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from synthfs.cli import main; sys.exit(main())"
)


def synthfs_command() -> list[str]:
    """argv prefix that runs the ``synthfs`` command (without touching the guest's env)."""
    if SOURCE:
        return [sys.executable, "-c", _BOOT, SOURCE]
    return [str(SYNTHFS)]
#: Guest path of the synthetic tree in every test.
MOUNT = "/data"
#: Content kept verbatim in a snapshot up to this size (larger: sha256 only).
_INLINE = 4096
#: Generous wall-clock bound for one program run (the suites' programs take ms).
TIMEOUT = 120


# -- trees --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One object in a snapshot. ``mode`` is ``S_IMODE`` (None for symlinks)."""

    kind: str  # "file" | "dir" | "symlink" | "other:<S_IFMT>"
    mode: int | None = None
    size: int | None = None  # files only: directory sizes are file-system specific
    digest: str | None = None  # files: sha256 of the content
    head: bytes | None = None  # files: the content itself when small, for readable diffs
    target: str | None = None  # symlinks: the link text, verbatim
    mtime_ns: int | None = None  # only when snapshot(..., times=True)


def snapshot(root: Path | str, *, times: bool = False, modes: bool = True) -> dict[str, Entry]:
    """Walk ``root`` (not following symlinks) into ``{relative path: Entry}``.

    ``times=True`` records regular files' mtimes (nanoseconds).

    The root itself is recorded as ``"."`` (its mode matters: it is /data).
    """
    root = Path(root)
    out: dict[str, Entry] = {}

    def visit(path: Path, rel: str) -> None:
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode) if modes else None
        mtime = st.st_mtime_ns if times else None
        if stat.S_ISLNK(st.st_mode):
            out[rel] = Entry("symlink", target=os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            # Directory mtimes move with every entry created or removed inside:
            # never compared, even with times=True.
            out[rel] = Entry("dir", mode=mode)
            for child in sorted(os.listdir(path)):
                visit(path / child, child if rel == "." else f"{rel}/{child}")
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
            out[rel] = Entry(
                "file",
                mode=mode,
                size=len(data),
                digest=hashlib.sha256(data).hexdigest(),
                head=data if len(data) <= _INLINE else None,
                mtime_ns=mtime,
            )
        else:
            out[rel] = Entry(f"other:{stat.S_IFMT(st.st_mode):o}", mode=mode)

    visit(root, ".")
    return out


def _show(e: Entry) -> str:
    if e.kind == "symlink":
        return f"symlink -> {e.target!r}"
    parts = [e.kind]
    if e.mode is not None:
        parts.append(f"mode={e.mode:04o}")
    if e.kind == "file":
        parts.append(f"size={e.size}")
        if e.head is not None:
            parts.append(repr(e.head[:80]))
        elif e.digest is not None:
            parts.append(f"sha256={e.digest[:16]}...")
        else:
            parts.append("(content not compared)")
    if e.mtime_ns is not None:
        parts.append(f"mtime_ns={e.mtime_ns}")
    return " ".join(parts)


def diff_trees(
    expected: Mapping[str, Entry], actual: Mapping[str, Entry], *, ignore: Sequence[str] = ()
) -> list[str]:
    """Every difference between two snapshots, as readable lines (empty: equal).

    ``ignore`` lists relative paths to leave out (with everything below them).
    """

    def kept(rel: str) -> bool:
        return not any(rel == i or rel.startswith(i + "/") for i in ignore)

    lines = []
    for rel in sorted(set(expected) | set(actual)):
        if not kept(rel):
            continue
        e, a = expected.get(rel), actual.get(rel)
        if e is None:
            lines.append(f"+ {rel}: unexpected {_show(a)}")  # type: ignore[arg-type]
        elif a is None:
            lines.append(f"- {rel}: missing, expected {_show(e)}")
        elif e != a:
            lines.append(f"~ {rel}: expected {_show(e)}, got {_show(a)}")
    return lines


# -- running programs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a run produced, as compared between native and synthfs."""

    status: int  # exit status; 128+N when killed by signal N (as a shell reports it)
    stdout: str
    stderr: str

    def show(self) -> str:
        return f"exit {self.status}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def run_native(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str] | None = None,
    umask: int = 0o022,
    timeout: float = TIMEOUT,
) -> Outcome:
    p = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        timeout=timeout,
        umask=umask,
        stdin=subprocess.DEVNULL,
    )
    return Outcome(_status(p.returncode), _decode(p.stdout), _decode(p.stderr))


def normalise_paths(text: str, native_root: str, mount: str = MOUNT) -> str:
    """Map the native root to the guest mount so both runs read alike."""
    return text.replace(native_root, mount)


# -- synthfs ------------------------------------------------------------------------------


def ptrace_unavailable_reason() -> str | None:
    """Why this kernel cannot run any ptrace+seccomp sandbox (None: it can).

    Only this may turn a synthfs-side test into a skip; anything else that
    keeps ``synthfs run`` from working is a failure.
    """
    try:
        scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        scope = None
    if scope == "3":
        return "kernel.yama.ptrace_scope = 3: ptrace is disabled on this kernel"
    status = Path("/proc/self/status").read_text()
    if "Seccomp:" not in status:
        return "kernel built without seccomp (no Seccomp: line in /proc/self/status)"
    # PTRACE_TRACEME in a throwaway child: EPERM here means a container or LSM forbids ptrace.
    probe = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "sys.exit(0 if libc.ptrace(0, 0, None, None) == 0 else ctypes.get_errno())\n"
    )
    rc = subprocess.run([sys.executable, "-c", probe], timeout=30).returncode
    if rc != 0:
        return f"PTRACE_TRACEME fails here ({os.strerror(rc) if rc > 0 else rc}): ptrace forbidden"
    return None


def _embedded_factory():  # pragma: no cover - depends on the agent engineer's API
    """The agent's embedded-stack context manager (imported late: may not exist yet)."""
    import synthfs.agent.embedded as emb

    for name in ("embedded", "EmbeddedStack", "Embedded", "start", "embedded_stack"):
        f = getattr(emb, name, None)
        if f is not None:
            return f
    raise AssertionError(
        f"agent.embedded has none of the expected entry points; it offers {dir(emb)}"
    )


@dataclass
class SynthfsLauncher:
    """Runs a command under ``synthfs run`` on a repository directory.

    ``mode="data"``: ``synthfs run --data REPO`` for each run (start-up is the
    embedded server and agent, about 0.4 s). ``mode="agent"``: the test opens
    :meth:`stack` on the repository (one embedded server + agent) and each run
    is ``synthfs run --agent ENDPOINT``.
    """

    mode: str = field(default_factory=lambda: os.environ.get("SYNTHFS_TEST_MODE", "data"))
    mount: str = MOUNT
    extra: tuple[str, ...] = field(default_factory=lambda: (
        ("--write-back",) if os.environ.get("SYNTHFS_WRITE_BACK") == "1" else ()))

    @contextlib.contextmanager
    def stack(self, repo: Path) -> Iterator[object | None]:
        """Yield the embedded stack object for ``repo`` (None in ``data`` mode)."""
        if self.mode == "data":
            yield None
            return
        factory = _embedded_factory()
        with factory(repo) as emb:
            yield emb

    def argv(
        self,
        repo: Path,
        argv: Sequence[str],
        *,
        stack: object | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        if self.mode == "agent":
            if stack is None:
                raise ValueError("agent mode needs the object from stack(repo)")
            source = ["--agent", str(stack.agent_endpoint)]  # type: ignore[attr-defined]
        elif self.mode == "data":
            source = ["--data", str(repo)]
        else:
            raise ValueError(f"SYNTHFS_TEST_MODE must be 'data' or 'agent', not {self.mode!r}")
        mount = [] if self.mount == MOUNT else ["--mount", self.mount]
        # SYNTHFS_ENGINE=notify runs a suite under the notify engine, even where a case
        # gives synthfs an environment of its own (the conformance cases do)
        engine = os.environ.get("SYNTHFS_ENGINE")
        chosen = ["--engine", engine] if engine else []
        return [*synthfs_command(), "run", *source, *mount, *chosen, *self.extra, *extra, "--",
                *argv]

    def run(
        self,
        repo: Path,
        argv: Sequence[str],
        *,
        cwd: Path | str,
        stack: object | None = None,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        umask: int = 0o022,
    ) -> Outcome:
        """Run ``argv`` under synthfs with ``repo`` as the mount (one-shot in data mode)."""
        if self.mode == "agent" and stack is None:
            with self.stack(repo) as emb:
                return run_native(
                    self.argv(repo, argv, stack=emb, extra=extra), cwd=cwd, env=env, umask=umask
                )
        return run_native(
            self.argv(repo, argv, stack=stack, extra=extra), cwd=cwd, env=env, umask=umask
        )


def supervisor_fd_growth(launcher: SynthfsLauncher, repo: Path, argv: Sequence[str], *,
                         cwd: Path, timeout: float = 120) -> int:
    """How many more fds the supervisor holds after the guest's work than before it.

    The guest prints a first line and waits for one on stdin, does its work, prints a
    second line and waits again (so that it is still running when the supervisor's
    fds are counted); it must then exit 0.
    """
    with launcher.stack(repo) as stack:
        p = subprocess.Popen(launcher.argv(repo, argv, stack=stack), cwd=cwd,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdin is not None
            counts = []
            for step in ("work\n", "end\n"):
                assert p.stdout.readline(), p.stderr.read() if p.stderr else ""
                counts.append(len(os.listdir(f"/proc/{p.pid}/fd")))
                p.stdin.write(step)
                p.stdin.flush()
            p.stdin.close()
            assert p.wait(timeout=timeout) == 0, p.stderr.read() if p.stderr else ""
        finally:
            p.kill()
            p.wait()
    return counts[1] - counts[0]
