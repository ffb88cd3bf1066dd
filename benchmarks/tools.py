"""The tools a workload runs under: native, synthfs, and the peers.

A :class:`Tool` turns a workload's shell text into an argv (``sh -c CMD``
inside the tool), says where the data directory appears to the guest, and
sets up and tears down whatever it needs for the whole run (a FUSE mount, a
running synthfs agent). Peers are installed with ``apt-get`` when missing; a
tool that cannot be installed or set up raises :class:`ToolError` and the
harness reports every one of its cells as failing with that message (never
drops it).

Trusts: the binaries it launches to be the tools they claim to be; it runs
them as the current user (root on the benchmark VM: runsc and bubblewrap need
it, or user namespaces).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs

from synthfs.benchmarks.workloads import Root, Workload

__all__ = [
    "ALL_TOOLS",
    "Context",
    "Tool",
    "ToolError",
    "make_tools",
]

log = logging.getLogger(__name__)


class ToolError(RuntimeError):
    """A tool is missing, cannot be installed, or cannot be set up."""


@attrs.define
class Context:
    """What a tool needs to know about the run."""

    disk_root: Path
    tmpfs_root: Path
    out_dir: Path
    install: bool = True  # apt-get install missing peers

    def root(self, root: Root) -> Path:
        return self.tmpfs_root if root is Root.TMPFS else self.disk_root


# ------------------------------------------------------------------ install

_apt_updated = False


def ensure_installed(binary: str, package: str, ctx: Context) -> str:
    """Path of ``binary``; ``apt-get install package`` first when missing."""
    global _apt_updated
    found = shutil.which(binary)
    if found:
        return found
    if not ctx.install:
        raise ToolError(f"{binary} not found (Debian package {package}; --no-install given)")
    if os.geteuid() != 0:
        raise ToolError(f"{binary} not found: run as root or `apt-get install {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.warning("installing %s (apt-get install %s)", binary, package)
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        _apt_updated = True
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, text=True
    )
    found = shutil.which(binary)
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ToolError(f"apt-get install {package} failed: {' | '.join(tail)}")
    return found


# ------------------------------------------------------------------- tools


class Tool:
    """Base: runs the workload natively (``sh -c CMD``) on the real directory."""

    name: ClassVar[str] = "native"
    label: ClassVar[str] = "native"
    note: ClassVar[str] = ""
    #: workload ids this tool runs (None: all, subject to ``applies``)
    only: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def applies(self, wl: Workload) -> bool:
        if wl.only is not None and self.name not in wl.only:
            return False
        return self.only is None or wl.id in self.only

    def setup(self) -> None:
        """Install and start what the tool needs; raise ToolError."""

    def teardown(self) -> None:
        """Undo :meth:`setup`; must not raise."""

    def data_path(self, root: Root) -> str:
        return str(self.ctx.root(root))

    def argv(self, script: str, root: Root) -> list[str]:
        return ["sh", "-c", script]


class Native(Tool):
    pass


class Proot(Tool):
    name = "proot"
    label = "PRoot"
    note = "`proot -b DIR:/data`; Debian's build has no seccomp acceleration"

    def setup(self) -> None:
        self.exe = ensure_installed("proot", "proot", self.ctx)

    def data_path(self, root: Root) -> str:
        return "/data"

    def argv(self, script: str, root: Root) -> list[str]:
        return [self.exe, "-b", f"{self.ctx.root(root)}:/data", "sh", "-c", script]


class Strace(Tool):
    name = "strace"
    label = "strace -f"
    note = "`strace -f -o /dev/null`: a stop on every syscall"

    def setup(self) -> None:
        self.exe = ensure_installed("strace", "strace", self.ctx)

    def argv(self, script: str, root: Root) -> list[str]:
        return [self.exe, "-f", "-o", "/dev/null", "sh", "-c", script]


class StraceSeccomp(Strace):
    name = "strace-bpf"
    label = "strace --seccomp-bpf"
    note = "`strace --seccomp-bpf -f -e trace=file -o /dev/null`: stops on file syscalls only"

    def argv(self, script: str, root: Root) -> list[str]:
        return [
            self.exe, "--seccomp-bpf", "-f", "-e", "trace=file", "-o", "/dev/null",
            "sh", "-c", script,
        ]  # fmt: skip


class Runsc(Tool):
    name = "runsc"
    label = "gVisor runsc (ptrace)"
    note = (
        "`runsc --platform=ptrace --network=none do`, Debian's 0.0~20221219: host / read-only "
        "under an in-memory overlay, so its writes (W4, W8) never reach the disk"
    )

    def setup(self) -> None:
        self.exe = ensure_installed("runsc", "runsc", self.ctx)
        if os.geteuid() != 0:
            raise ToolError("runsc do needs root here (rootless mode needs --network=host)")

    def argv(self, script: str, root: Root) -> list[str]:
        # --network=none: the default sandbox network fails to set up on this
        # VM; `do` mounts the host root read-only with a tmpfs overlay.
        return [
            self.exe, "--platform=ptrace", "--network=none", "do", "--quiet",
            "sh", "-c", script,
        ]  # fmt: skip


class Bubblewrap(Tool):
    name = "bwrap"
    label = "bubblewrap"
    note = "tmpfs root, /usr and /etc read-only, `--bind DIR /data`: namespaces, no interposition"

    def setup(self) -> None:
        self.exe = ensure_installed("bwrap", "bubblewrap", self.ctx)

    def data_path(self, root: Root) -> str:
        return "/data"

    def argv(self, script: str, root: Root) -> list[str]:
        return [
            self.exe, "--unshare-all", "--die-with-parent",
            "--tmpfs", "/",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--ro-bind", "/etc", "/etc",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--bind", str(self.ctx.root(root)), "/data",
            "--chdir", "/",
            "sh", "-c", script,
        ]  # fmt: skip


class RcloneFuse(Tool):
    """A FUSE mount of the same directory: rclone's local backend.

    Chosen over sshfs: sshfs to localhost needs an sshd with keys (a system
    service to install and start on a shared machine) and its cost is mostly
    ssh's encryption; ``rclone mount`` of a local directory needs nothing but
    ``fuse3`` and measures the FUSE round trips a mount costs.
    ``--vfs-cache-mode writes`` is what rclone documents for programs that
    open files read-write (sqlite, git): without it W8 fails. ``--file-perms
    0755``: the local backend keeps no modes through the mount, and W8c runs
    the program it built.
    """

    name = "fuse"
    label = "FUSE (rclone mount)"
    note = (
        "`rclone mount COPY MNT --vfs-cache-mode writes --file-perms 0755` (local backend, "
        "fuse3), on its own copy of the data (rclone drops the page cache of what it reads)"
    )
    MOUNT_TIMEOUT = 15.0

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.mounts: dict[Root, Path] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def applies(self, wl: Workload) -> bool:
        return wl.root is not Root.NONE and super().applies(wl)

    def setup(self) -> None:
        self.exe = ensure_installed("rclone", "rclone", self.ctx)
        self.fusermount = ensure_installed("fusermount3", "fuse3", self.ctx)
        if not Path("/dev/fuse").exists():
            raise ToolError("/dev/fuse missing: FUSE is not available on this machine")
        for root in (Root.DISK, Root.TMPFS):
            self.mounts[root] = self._mount(root)

    def _private_copy(self, root: Root) -> Path:
        """The mount serves its own copy of the data: rclone's local backend drops
        the page cache of every file it reads (fadvise), which left the real
        files cold for whichever tool ran next (measured: 256 MiB resident
        before a read through the mount, 144 MiB after)."""
        src = self.ctx.root(root)
        dst = src.parent / f"{src.name}-fuse"
        stamp = ".bench-stamp"
        have = [(d / stamp).read_text() if (d / stamp).exists() else None for d in (src, dst)]
        if have[0] is not None and have[0] == have[1]:
            return dst
        if dst.exists():
            shutil.rmtree(dst)
        p = subprocess.run(["cp", "-a", str(src), str(dst)], capture_output=True, text=True)
        if p.returncode != 0:
            raise ToolError(f"copying the data for the FUSE mount failed: {p.stderr.strip()}")
        return dst

    def _mount(self, root: Root) -> Path:
        mnt = self.ctx.out_dir / f"mnt-{root.value}"
        if os.path.ismount(mnt):
            subprocess.run([self.fusermount, "-u", "-z", str(mnt)], check=False)
        mnt.mkdir(parents=True, exist_ok=True)
        logf = self.ctx.out_dir / f"rclone-{root.value}.log"
        cache = self.ctx.out_dir / f"rclone-cache-{root.value}"
        with logf.open("wb") as lf:
            proc = subprocess.Popen(
                self._mount_argv(self._private_copy(root), mnt, cache),
                stdout=lf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + self.MOUNT_TIMEOUT
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = logf.read_text(errors="replace").strip().splitlines()[-3:]
                raise ToolError(f"rclone mount failed: {' | '.join(tail) or 'timeout'}")
            time.sleep(0.05)
        return mnt

    def _mount_argv(self, src: Path, mnt: Path, cache: Path) -> list[str]:
        return [
            self.exe, "mount", str(src), str(mnt),
            "--config", str(self.ctx.out_dir / "rclone.conf"),
            "--vfs-cache-mode", "writes", "--cache-dir", str(cache),
            "--file-perms", "0755",
        ]  # fmt: skip

    def teardown(self) -> None:
        for mnt in self.mounts.values():
            subprocess.run([self.fusermount, "-u", str(mnt)], capture_output=True, check=False)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.mounts.clear()
        self.procs.clear()

    def data_path(self, root: Root) -> str:
        return str(self.mounts.get(root, self.ctx.root(root)))


#: A one-rule seccomp filter, then exec: the floor any seccomp sandbox pays.
#: Inline (``python -c``) so the launcher imports nothing but pyseccomp.
FLOOR_LAUNCHER = """\
import errno, os, sys
import pyseccomp as sc
f = sc.SyscallFilter(defaction=sc.ALLOW)
f.add_rule(sc.ERRNO(errno.ENOSYS), "kexec_load")
f.load()
os.execvp(sys.argv[1], sys.argv[1:])
"""


class SeccompFloor(Tool):
    name = "seccomp"
    label = "bare seccomp filter"
    note = "python launcher loads a one-rule pyseccomp filter (default ALLOW) and execs"
    only = ("S0", "W5", "W7a", "W7b")

    def setup(self) -> None:
        if importlib.util.find_spec("pyseccomp") is None:
            raise ToolError("pyseccomp is not installed in this interpreter")

    def argv(self, script: str, root: Root) -> list[str]:
        return [sys.executable, "-c", FLOOR_LAUNCHER, "sh", "-c", script]


# ------------------------------------------------------------------ synthfs


#: The source tree this harness (and so the synthfs it runs) comes from. Run
#: the harness from a snapshot (``git archive HEAD``) to benchmark one commit
#: while others keep editing the checkout.
SOURCE_ROOT = Path(__file__).resolve().parent.parent

_SYNTHFS_LAUNCH = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from synthfs.cli import main; sys.exit(main())"
)


def synthfs_exe() -> list[str]:
    """``synthfs`` from :data:`SOURCE_ROOT` (not whatever the venv points at)."""
    return [sys.executable, "-c", _SYNTHFS_LAUNCH.format(root=str(SOURCE_ROOT))]


def source_commit() -> str:
    """The commit synthfs is measured at (``.git-commit`` of a snapshot, else git)."""
    stamp = SOURCE_ROOT / ".git-commit"
    if stamp.exists():
        return stamp.read_text().strip() + " (snapshot)"
    p = subprocess.run(
        ["git", "-C", str(SOURCE_ROOT), "describe", "--always", "--dirty"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return p.stdout.strip() or "unknown"


#: Names under which ``agent.embedded`` may offer its context manager; the
#: first one found is used. It is called with the data directory and must
#: yield an object with ``.agent_endpoint``.
EMBEDDED_NAMES = ("embedded", "EmbeddedStack", "embedded_stack", "Embedded", "start_embedded")


@contextlib.contextmanager
def embedded_stack(data_dir: Path, cache_dir: Path, **agent: Any) -> Iterator[Any]:
    """Start the embedded server + agent for ``data_dir``; yield the handle.

    The one place that knows ``agent.embedded``'s API: adapt it here when
    that module lands or changes.
    """
    if importlib.util.find_spec("synthfs.agent.embedded") is None:
        raise ToolError("agent.embedded does not exist yet (no embedded server+agent)")
    module = importlib.import_module("synthfs.agent.embedded")
    factory = next((getattr(module, n) for n in EMBEDDED_NAMES if hasattr(module, n)), None)
    if factory is None:
        raise ToolError(f"agent.embedded has none of {', '.join(EMBEDDED_NAMES)}")
    try:
        cm = factory(data_dir, cache_dir=cache_dir, **agent)
    except TypeError:
        if agent:
            raise ToolError(f"agent.embedded takes no {', '.join(agent)}") from None
        cm = factory(data_dir)
    with cm as stack:
        if not getattr(stack, "agent_endpoint", None):
            raise ToolError("synthfs.agent.embedded's handle has no agent_endpoint")
        yield stack


class Synthfs(Tool):
    """``synthfs run --agent EP`` with a running embedded stack per data root."""

    name = "synthfs"
    label = "synthfs"
    note = "`synthfs run --agent EP` with a running agent (embedded server+agent, started once)"

    #: passed to the embedded agent (SynthfsWriteBack: write_through=False)
    agent_options: dict[str, Any] = {}

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.stacks = contextlib.ExitStack()
        self.endpoints: dict[Root, str] = {}

    def setup(self) -> None:
        if importlib.util.find_spec("synthfs.interposer.run") is None:
            raise ToolError("`synthfs run` is not implemented yet (no interposer.run module)")
        try:
            for root in (Root.DISK, Root.TMPFS):
                cache = self.ctx.out_dir / f"{self.name}-cache-{root.value}"
                # The server's state beside the data, on its file system (a tmpfs
                # root is its own mount: the default state directory is not on it).
                state = self.ctx.root(root).parent / f"{self.name}-state"
                stack = self.stacks.enter_context(embedded_stack(
                    self.ctx.root(root), cache, state_dir=state, **self.agent_options))
                self.endpoints[root] = str(stack.agent_endpoint)
        except ToolError:
            self.teardown()
            raise
        except Exception as exc:
            self.teardown()
            raise ToolError(f"embedded server+agent failed to start: {exc!r}") from exc
        probe = subprocess.run(
            self.argv("true", Root.DISK), capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode != 0:
            self.teardown()
            tail = probe.stderr.strip().splitlines()[-2:]
            raise ToolError(f"`synthfs run -- true` exits {probe.returncode}: {' | '.join(tail)}")

    def teardown(self) -> None:
        try:
            self.stacks.close()
        except Exception:
            log.exception("stopping the embedded synthfs stack")
        self.stacks = contextlib.ExitStack()

    def data_path(self, root: Root) -> str:
        return "/data"

    def argv(self, script: str, root: Root) -> list[str]:
        ep = self.endpoints.get(Root.DISK if root is Root.NONE else root, "")
        return [*synthfs_exe(), "run", "--agent", ep, "--", "sh", "-c", script]


class SynthfsWriteBack(Synthfs):
    """``synthfs run --agent EP`` with a ``--write-back`` agent (close queues the upload)."""

    name = "synthfs-wb"
    label = "synthfs write-back"
    note = "`synthfs run --agent EP`, the agent `--write-back` (a close journals and queues)"
    agent_options = {"write_through": False}


class SynthfsData(Tool):
    """``synthfs run --data DIR``: start-up with its own embedded stack."""

    name = "synthfs-data"
    label = "synthfs --data"
    note = "`synthfs run --data DIR`: starts its own server and agent (start-up row only)"
    only = ("S0",)

    def setup(self) -> None:
        if importlib.util.find_spec("synthfs.interposer.run") is None:
            raise ToolError("`synthfs run` is not implemented yet (no interposer.run module)")

    def data_path(self, root: Root) -> str:
        return "/data"

    def argv(self, script: str, root: Root) -> list[str]:
        data = str(self.ctx.root(Root.DISK if root is Root.NONE else root))
        return [*synthfs_exe(), "run", "--data", data, "--", "sh", "-c", script]


_TOOL_CLASSES: tuple[type[Tool], ...] = (
    Native, Synthfs, SynthfsWriteBack, SynthfsData, Proot, Strace, StraceSeccomp, Runsc,
    Bubblewrap, RcloneFuse, SeccompFloor,
)  # fmt: skip
ALL_TOOLS: dict[str, type[Tool]] = {t.name: t for t in _TOOL_CLASSES}


def make_tools(names: list[str], ctx: Context) -> list[Tool]:
    """Instances for ``names`` (native is always first)."""
    unknown = [n for n in names if n not in ALL_TOOLS]
    if unknown:
        known = ", ".join(ALL_TOOLS)
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; choose from {known}")
    ordered = ["native", *[n for n in names if n != "native"]]
    return [ALL_TOOLS[n](ctx) for n in dict.fromkeys(ordered)]
