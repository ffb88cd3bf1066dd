"""The conformance case table and the harness that runs one case on one side.

A case is a real program (coreutils, tar, grep, sqlite3, sh, python) given as
an argv template where ``{root}`` is the tree's root: a temporary directory
natively, ``/data`` under synthfs. Both sides start from the same tree (built
twice by the same deterministic builder, times included), run in the same
cwd outside the tree with the same environment and umask, and must agree on
exit status, stdout and stderr (after mapping the native root to ``/data`` and
the case's own normaliser) and on the resulting tree (names, types, contents,
symlink targets, permission bits; file mtimes only where the case says so).

Each normaliser is a deliberate statement that some output legitimately
differs between two correct file systems; its comment says why. Everything
not normalised must match byte for byte.
"""

from __future__ import annotations

import io
import os
import random
import re
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import helpers

__all__ = [
    "CASES",
    "ENV",
    "Case",
    "Side",
    "build_standard",
    "compare",
    "env_for",
    "finish",
    "run_case_native",
]

#: One fixed environment for both sides: C locale (stable messages and sort
#: order), UTC (stable dates), no user site for python.
ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LC_ALL": "C",
    "TZ": "UTC",
    "HOME": "/nonexistent",
    "PYTHONDONTWRITEBYTECODE": "1",
    "SYNTHFS_CONFORMANCE": "1",  # a variable the guest must see unchanged
    # git commits hash their dates: fix them so the case is deterministic
    "GIT_AUTHOR_DATE": "@1600000000 +0000",
    "GIT_COMMITTER_DATE": "@1600000000 +0000",
    "GIT_CONFIG_NOSYSTEM": "1",
}
#: mtime given to every object of a starting tree (2020-09-13T12:26:40Z).
FIXED_NS = 1_600_000_000_000_000_000
PY = sys.executable


# -- starting trees -----------------------------------------------------------------------


def _fix_times(root: Path) -> None:
    """Give every object the same mtime, bottom-up (so directories keep theirs)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(FIXED_NS, FIXED_NS), follow_symlinks=False)
    os.utime(root, ns=(FIXED_NS, FIXED_NS))


def _tar_bytes() -> bytes:
    """A small deterministic archive: dirs, files with odd modes, a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.size, ti.linkname = (
                kind,
                mode,
                1_234_567_890,
                len(data),
                link,
            )
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            tf.addfile(ti, io.BytesIO(data) if data else None)

        add("pkg", tarfile.DIRTYPE, 0o755)
        add("pkg/README", tarfile.REGTYPE, 0o644, b"read me\n")
        add("pkg/bin", tarfile.DIRTYPE, 0o750)
        add("pkg/bin/tool", tarfile.REGTYPE, 0o755, b"#!/bin/sh\necho tool\n")
        add("pkg/secret.key", tarfile.REGTYPE, 0o600, b"k" * 3000)
        add("pkg/latest", tarfile.SYMTYPE, 0o777, link="bin/tool")
        add("pkg/empty", tarfile.DIRTYPE, 0o700)
    return buf.getvalue()


def build_standard(root: Path) -> None:
    """The default starting tree. Deterministic: same bytes, modes and times every call.

    ::

        a.txt lines.txt exec.sh(0755) private.txt(0600) seed.bin(200 KiB) sums.txt in.tar
        d/ b.txt up -> ../a.txt  sub/c.txt  empty/
        e/(0700) x.txt
        link -> a.txt   dlink -> d   dangling -> nowhere
    """
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)

    def w(rel: str, data: bytes, mode: int = 0o644) -> None:
        p = root / rel
        p.write_bytes(data)
        os.chmod(p, mode)

    def d(rel: str, mode: int = 0o755) -> None:
        (root / rel).mkdir()
        os.chmod(root / rel, mode)

    w("a.txt", b"hello\nworld\n")
    w("lines.txt", b"".join(b"line %d: the quick brown fox\n" % i for i in range(1, 21)))
    w("exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
    w("private.txt", b"private\n", 0o600)
    w("seed.bin", random.Random(1234).randbytes(200 * 1024))
    d("d")
    w("d/b.txt", b"a needle in d\n")
    os.symlink("../a.txt", root / "d/up")
    d("d/sub")
    w("d/sub/c.txt", b"deep needle\nand more\n")
    d("d/empty")
    d("e", 0o700)
    w("e/x.txt", b"x\n")
    os.symlink("a.txt", root / "link")
    os.symlink("d", root / "dlink")
    os.symlink("nowhere", root / "dangling")
    w("sums.txt", b"")  # filled below from the real contents
    import hashlib

    sums = "".join(
        f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("a.txt", "d/b.txt", "seed.bin")
    )
    w("sums.txt", sums.encode())
    w("in.tar", _tar_bytes())
    _fix_times(root)


def build_bigdir(root: Path) -> None:
    """The standard tree plus ``big/`` with 3,000 files (several getdents64 batches)."""
    build_standard(root)
    big = root / "big"
    big.mkdir()
    for i in range(3000):
        (big / f"file-{i:05d}-{'x' * (i % 40)}").write_bytes(b"%d\n" % i)
    _fix_times(root)


def build_odd_names(root: Path) -> None:
    """The standard tree plus ``names/``: spaces, UTF-8, 255 bytes, non-UTF-8 bytes, deep path."""
    build_standard(root)
    names = root / "names"
    names.mkdir()
    for name in (b"with space", "\u00e9t\u00e9 \u2603".encode(), b"n" * 255, b"raw-\xff\xfe",
                 b"-dash", b"tab\tin", b"star*?", b".hidden"):
        with open(os.path.join(os.fsencode(names), name), "wb") as f:
            f.write(name + b"\n")
    deep = root / "deep"
    for i in range(30):
        deep = deep / f"level-{i:02d}-{'d' * 40}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("bottom\n")
    _fix_times(root)


def build_scripts(root: Path) -> None:
    """The standard tree plus executables stored in it (issue #19): ``#!`` scripts, a
    ./configure that runs scripts of its tree, interpreters that are themselves in the
    tree (named relative to the cwd, as the kernel allows, so the same bytes work
    natively and on /data), a copy of a host ELF, and ``#!`` lines the kernel refuses.

    ::

        run.sh argv.py configure build-aux/{helper.sh,config.sh}
        bin/{echo,cat,readlink}(ELF copies) wrap.run(#!bin/echo) tools/wrap.sh via.run
        chain/n1..n6 (each #! the one before: n6 is one script too many)
        bad-empty bad-blank bad-long bad-missing noexec.sh(0644) bad-nested bad-interp-dir run-link
    """
    build_standard(root)

    def w(rel: str, data: bytes, mode: int = 0o755) -> None:
        p = root / rel
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, mode)

    w("run.sh", b'#!/bin/sh\necho "run.sh: $0 [$#] $*"\ncat "$0" > /dev/null && echo readable\n')
    w("argv.py", b"#!/usr/bin/env python3\nimport sys\nprint(sys.argv)\n")
    w("configure", b'#!/bin/sh\n# a ./configure: runs scripts of its own tree\n'
                   b'echo "configure $*"\n./build-aux/helper.sh check-cc\n'
                   b'. ./build-aux/config.sh\nbuild-aux/helper.sh "$prefix"\n'
                   b'echo "prefix=$prefix" > config.status\nchmod +x config.status\n'
                   b'./config.status && echo status-ran\n')
    w("build-aux/helper.sh", b'#!/bin/sh\necho "helper: $0 $1"\n')
    w("build-aux/config.sh", b'prefix=/opt/x\n', 0o644)
    for name in ("echo", "cat", "readlink"):
        w(f"bin/{name}", Path(f"/bin/{name}").resolve().read_bytes())
    # an interpreter in the tree: an ELF, and a script (whose interpreter is the host's)
    w("wrap.run", b"#!bin/echo from-interp\n")
    w("tools/wrap.sh", b'#!/bin/sh\necho "wrap.sh: $0 [$#] $*"\n')
    w("via.run", b"#!tools/wrap.sh  -x  y  \nignored\n")
    w("chain/n1", b"#!/bin/echo\n")
    for i in range(2, 7):
        w(f"chain/n{i}", b"#!chain/n%d\n" % (i - 1))
    w("bad-empty", b"#!\necho fell back to sh\n")
    w("bad-blank", b"#!  \t \necho fell back again\n")
    w("bad-long", b"#!/" + b"x" * 300 + b"\n")
    w("bad-missing", b"#!/nonexistent/interp\n")
    w("noexec.sh", b"#!/bin/sh\necho never\n", 0o644)
    w("bad-nested", b"#!bad-empty\necho nested fell back\n")  # an interpreter that is refused
    w("bad-interp-dir", b"#!build-aux\necho dir fell back\n")
    os.symlink("run.sh", root / "run-link")
    _fix_times(root)


# -- normalisers --------------------------------------------------------------------------
# Each takes (text, dirs) where dirs is the set of guest paths (/data/...) that are
# directories in that side's resulting tree, and returns the text to compare.

Normaliser = Callable[[str, frozenset[str]], str]


def exact(text: str, dirs: frozenset[str]) -> str:
    return text


def sort_lines(text: str, dirs: frozenset[str]) -> str:
    # Directory listing order (getdents) is unspecified: find, grep -r and du
    # print in that order, so only the set of lines is comparable.
    return "".join(sorted(text.splitlines(keepends=True)))


def ls_long(text: str, dirs: frozenset[str]) -> str:
    # `ls -la` of a directory. Legitimately file-system specific, so masked:
    # - "total N": the sum of st_blocks, an allocation detail of the backing store;
    # - the ".." line: it is the tree's parent, a different host directory natively;
    # - size and link count of directories: st_size of a directory is
    #   unspecified (ext4 4096, tmpfs grows per entry) and st_nlink of a
    #   directory is 1 on btrfs and others; column widths follow them, so
    #   fields are re-joined with single spaces.
    # Everything else (modes, file link counts, owners, file sizes, mtimes, names,
    # symlink targets) must match.
    out = []
    for line in text.splitlines():
        f = line.split()
        if not f or f[0] == "total" or f[-1] == "..":
            continue
        if f[0].startswith("d") and len(f) >= 6:
            f[1] = f[4] = "<dir>"
        out.append(" ".join(f))
    return "\n".join(out) + "\n"


def du_apparent(text: str, dirs: frozenset[str]) -> str:
    # `du -ab`: a directory's line counts its own st_size (unspecified, see
    # ls_long) plus everything below, so directory lines keep only the path.
    # File lines (apparent sizes) must match. Order is getdents order: sorted.
    out = []
    for line in text.splitlines():
        _size, _, path = line.partition("\t")
        out.append(f"<dir>\t{path}" if path in dirs else line)
    return "".join(sorted(x + "\n" for x in out))


def dd_stats(text: str, dirs: frozenset[str]) -> str:
    # dd's last stderr line reports elapsed time and throughput: keep the byte count.
    return re.sub(r"copied, [0-9.e+-]+ s, .*", "copied, <time>", text)


# -- the case table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One conformance case. ``argv`` elements may contain ``{root}``."""

    name: str
    argv: tuple[str, ...]
    tree: Callable[[Path], None] = build_standard
    cwd: str | None = None  # relative to the root: the program starts there
    norm: Normaliser = exact
    times: bool = False  # compare regular files' mtimes too
    umask: int = 0o022
    ignore: tuple[str, ...] = ()  # tree paths whose bytes embed host stat data (see the case)
    needs: tuple[str, ...] = ()  # programs beyond coreutils; missing ones skip the case
    #: a documented divergence (docs/namespace.md): the case must fail (strict xfail),
    #: so it is noticed the day synthfs supports it
    diverges: str = ""

    def render(self, root: str) -> list[str]:
        argv = [a.replace("{root}", root) for a in self.argv]
        if self.cwd is not None:
            # synthfs run keeps the caller's cwd and /data does not exist on the
            # host, so both sides enter the tree the same way: through a shell.
            target = root if self.cwd == "." else f"{root}/{self.cwd}"
            argv = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", target, *argv]
        return argv


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


def py(script: str) -> tuple[str, ...]:
    return (PY, "-I", "-c", script, "{root}")


PY_IO = """
import os, sys
r = sys.argv[1]
with open(f"{r}/new.txt", "w") as f:
    f.write("line1\\n"); f.write("line2\\n")
with open(f"{r}/new.txt", "a") as f:
    f.write("appended\\n")
with open(f"{r}/new.txt", "r+b") as f:
    f.seek(2); f.write(b"NE"); f.seek(0); print(f.read())
    print(f.tell(), os.fstat(f.fileno()).st_size)
print(os.stat(f"{r}/new.txt").st_size, os.path.getsize(f"{r}/a.txt"))
print(open(f"{r}/a.txt").read(), end="")
with open(f"{r}/seed.bin", "rb") as f:
    f.seek(1000); print(f.read(16).hex()); print(os.pread(f.fileno(), 8, 150000).hex())
fd = os.open(f"{r}/pw.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
os.pwrite(fd, b"xyz", 10); os.write(fd, b"ab"); os.writev(fd, [b"C", b"D"]); os.close(fd)
fd = os.open(f"{r}/pw.bin", os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_END), os.preadv(fd, [bytearray(4)], 0)); os.close(fd)
os.rename(f"{r}/new.txt", f"{r}/d/renamed.txt")
os.remove(f"{r}/lines.txt")
os.makedirs(f"{r}/m/n/o")
print(sorted(os.listdir(r)))
print(os.path.exists(f"{r}/lines.txt"), os.path.isdir(f"{r}/m/n"), os.path.islink(f"{r}/link"))
"""

PY_PATHLIB = """
import sys
from pathlib import Path
r = Path(sys.argv[1])
print(sorted(p.relative_to(r).as_posix() for p in r.rglob("*.txt")))
print((r / "a.txt").read_text(), end="")
(r / "p" / "q").mkdir(parents=True)
(r / "p" / "q" / "w.bin").write_bytes(bytes(range(256)))
for p in sorted(r.iterdir()):
    print(p.name, p.is_dir(), p.is_file(), p.is_symlink(), p.exists())
print((r / "link").resolve(), (r / "d" / "up").resolve(), (r / "dlink" / "sub").resolve())
(r / "private.txt").unlink()
(r / "a.txt").rename(r / "p" / "a.txt")
(r / "p" / "t.txt").touch(mode=0o600)
(r / "d" / "empty").rmdir()
print((r / "p" / "q" / "w.bin").stat().st_size, (r / "d").exists(), (r / "nope").exists())
print((r / "link").exists(), (r / "link").is_symlink(), (r / "link").readlink())
"""

PY_SCANDIR = """
import os, sys
r = sys.argv[1]
def walk(p, depth):
    with os.scandir(p) as it:
        for e in sorted(it, key=lambda e: e.name):
            st = e.stat(follow_symlinks=False)
            size = st.st_size if e.is_file(follow_symlinks=False) else "-"
            print("  " * depth + e.name, e.path, e.is_dir(), e.is_file(), e.is_symlink(),
                  e.is_dir(follow_symlinks=False), oct(st.st_mode), size, e.inode() == st.st_ino)
            if e.is_dir(follow_symlinks=False):
                walk(e.path, depth + 1)
walk(r, 0)
for dirpath, dirnames, filenames in sorted(os.walk(r)):
    print(dirpath, sorted(dirnames), sorted(filenames))
"""

PY_SHUTIL = """
import os, shutil, sys
r = sys.argv[1]
shutil.copytree(f"{r}/d", f"{r}/d2", symlinks=True)
shutil.copytree(f"{r}/d", f"{r}/d3")
shutil.copy2(f"{r}/exec.sh", f"{r}/exec2.sh")
shutil.copyfile(f"{r}/seed.bin", f"{r}/seed2.bin")
shutil.copymode(f"{r}/private.txt", f"{r}/seed2.bin")
shutil.move(f"{r}/e", f"{r}/d2/e")
shutil.rmtree(f"{r}/d")
print(sorted(os.listdir(r)), sorted(os.listdir(f"{r}/d2")))
"""

PY_JSON = """
import json, sys
r = sys.argv[1]
doc = {"name": "synthfs", "n": [1, 2, 3], "nested": {"ok": True, "pi": 3.5}, "s": "\\u00e9t\\u00e9"}
with open(f"{r}/doc.json", "w") as f:
    json.dump(doc, f, indent=2, sort_keys=True)
with open(f"{r}/doc.json") as f:
    back = json.load(f)
print(back == doc, json.dumps(back, sort_keys=True))
"""

PY_THREADS = """
import os, sys, threading
r = sys.argv[1]
def writer(i):
    with open(f"{r}/t{i}.txt", "w") as f:
        for j in range(3000):
            f.write(f"thread {i} line {j}\\n")
            if j % 500 == 0:
                f.flush()
        f.flush(); os.fsync(f.fileno())
ts = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print(sorted(n for n in os.listdir(r) if n.startswith("t")))
print([os.path.getsize(f"{r}/t{i}.txt") for i in range(4)])
"""

PY_ERRORS = """
import errno, os, sys
r = sys.argv[1]
def t(label, f):
    try:
        f(); print(label, "ok")
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, e.errno))
t("open missing", lambda: open(f"{r}/missing"))
t("excl existing", lambda: os.open(f"{r}/a.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
t("excl on symlink", lambda: os.open(f"{r}/dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
t("write dir", lambda: os.open(f"{r}/d", os.O_WRONLY))
t("listdir file", lambda: os.listdir(f"{r}/a.txt"))
t("file as dir", lambda: open(f"{r}/a.txt/x"))
t("stat file slash", lambda: os.stat(f"{r}/a.txt/"))
t("creat dir slash", lambda: os.open(f"{r}/newdir/", os.O_CREAT | os.O_WRONLY))
t("rmdir nonempty", lambda: os.rmdir(f"{r}/d"))
t("rmdir dot", lambda: os.rmdir(f"{r}/d/empty/."))
t("rmdir file", lambda: os.rmdir(f"{r}/a.txt"))
t("unlink dir", lambda: os.unlink(f"{r}/d"))
t("unlink missing", lambda: os.unlink(f"{r}/missing"))
t("mkdir existing", lambda: os.mkdir(f"{r}/d"))
t("mkdir on symlink", lambda: os.mkdir(f"{r}/link"))
t("mkdir missing parent", lambda: os.mkdir(f"{r}/nope/x"))
t("O_DIRECTORY file", lambda: os.open(f"{r}/a.txt", os.O_RDONLY | os.O_DIRECTORY))
t("O_NOFOLLOW link", lambda: os.open(f"{r}/link", os.O_RDONLY | os.O_NOFOLLOW))
t("dangling", lambda: open(f"{r}/dangling"))
t("rename into self", lambda: os.rename(f"{r}/d", f"{r}/d/sub/x"))
t("rename dir over file", lambda: os.rename(f"{r}/d", f"{r}/a.txt"))
t("rename file over dir", lambda: os.rename(f"{r}/a.txt", f"{r}/e"))
t("rename dir over nonempty", lambda: os.rename(f"{r}/d/empty", f"{r}/e"))
t("rename missing", lambda: os.rename(f"{r}/missing", f"{r}/x"))
t("readlink file", lambda: os.readlink(f"{r}/a.txt"))
t("symlink exists", lambda: os.symlink("x", f"{r}/a.txt"))
t("chdir file", lambda: os.chdir(f"{r}/a.txt"))
t("truncate dir", lambda: os.truncate(f"{r}/d", 0))
t("link dir", lambda: os.link(f"{r}/d", f"{r}/dl"))
print("access", os.access(f"{r}/missing", os.F_OK), os.access(f"{r}/a.txt", os.W_OK))
t("long name", lambda: open(f"{r}/" + "n" * 256))
os.symlink("loop2", f"{r}/loop1"); os.symlink("loop1", f"{r}/loop2")
t("loop", lambda: open(f"{r}/loop1"))
print(sorted(os.listdir(r)))
"""

#: The prelude of the errno edge cases below (a syscall fuzzer found the first
#: five): ``t`` prints the errno name (or ok) of one call; raw openat2/renameat2.
PY_EDGE = """
import ctypes, errno, os, stat, struct, sys
r = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def openat2(path, flags, mode=0):
    how = struct.pack("QQQ", flags, mode, 0)
    fd = libc.syscall(437, -100, path.encode(), how, len(how))  # SYS_openat2, AT_FDCWD
    if fd < 0:
        raise OSError(ctypes.get_errno(), "openat2")
    return fd
def renameat2(a, b, fl):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), fl) < 0:
        raise OSError(ctypes.get_errno(), "renameat2")
def t(label, f):
    try:
        fd = f()
        if isinstance(fd, int):
            os.close(fd)
        print(label, "ok")
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, e.errno))
TMP, REG, L = os.O_TMPFILE, stat.S_IFREG | 0o644, "a" * 300
"""

#: Hard links: one file under several names (nlink, one st_ino, writes seen through
#: every name, link(2)'s errors, a link to a symlink with and without AT_SYMLINK_FOLLOW).
PY_LINKS = PY_EDGE + """
os.link(f"{r}/a.txt", f"{r}/d/h1")
os.link(f"{r}/d/h1", f"{r}/h2")
def show(*names):
    for n in names:
        st = os.stat(f"{r}/{n}")
        print(n, st.st_nlink, st.st_size, st.st_ino == os.stat(f"{r}/{names[0]}").st_ino)
show("a.txt", "d/h1", "h2")
with open(f"{r}/h2", "a") as f:
    f.write("through h2\\n")
    f.flush()
    print(open(f"{r}/a.txt").read(), end="")  # an open writer: what it wrote before
print(open(f"{r}/d/h1").read(), end="")
with open(f"{r}/a.txt", "r+") as f:
    f.write("HELLO")
print(open(f"{r}/h2").read(), end="")
fd = os.open(f"{r}/d/h1", os.O_WRONLY | os.O_TRUNC)
os.write(fd, b"short\\n"); os.close(fd)
print(open(f"{r}/a.txt").read(), os.fstat(os.open(f"{r}/h2", os.O_RDONLY)).st_size)
os.truncate(f"{r}/h2", 3)
print(repr(open(f"{r}/d/h1").read()), os.stat(f"{r}/a.txt").st_size)
os.chmod(f"{r}/h2", 0o600)
print(oct(os.stat(f"{r}/a.txt").st_mode))
os.rename(f"{r}/h2", f"{r}/h3")
show("a.txt", "d/h1", "h3")
fd = os.open(f"{r}/a.txt", os.O_WRONLY | os.O_APPEND)
os.write(fd, b"late\\n")
os.dup2(os.open("/dev/null", os.O_RDONLY), fd)  # closed without close(2), as a shell does
os.unlink(f"{r}/a.txt")
print(repr(open(f"{r}/d/h1").read()))
show("d/h1", "h3")
with os.scandir(r) as it:
    print(sorted((e.name, e.stat(follow_symlinks=False).st_nlink) for e in it if e.is_file()))
t("link dir", lambda: os.link(f"{r}/d", f"{r}/dl"))
t("link missing", lambda: os.link(f"{r}/missing", f"{r}/m"))
t("link onto existing", lambda: os.link(f"{r}/h3", f"{r}/lines.txt"))
t("link onto dir", lambda: os.link(f"{r}/h3", f"{r}/d"))
t("link into missing dir", lambda: os.link(f"{r}/h3", f"{r}/nope/x"))
t("link trailing slash", lambda: os.link(f"{r}/h3", f"{r}/new/"))
t("link from file/", lambda: os.link(f"{r}/h3/", f"{r}/new"))
t("link symlink itself", lambda: os.link(f"{r}/link", f"{r}/l2", follow_symlinks=False))
os.symlink("h3", f"{r}/sl")
t("linkat follow", lambda: libc.linkat(-100, f"{r}/sl".encode(), -100, f"{r}/l3".encode(), 0x400))
print(os.path.islink(f"{r}/l2"), os.readlink(f"{r}/l2"), os.path.islink(f"{r}/l3"))
print(os.stat(f"{r}/l3").st_nlink, os.lstat(f"{r}/l2").st_nlink, os.lstat(f"{r}/link").st_nlink)
"""

#: Inode numbers: every live file shows its own (st_dev, st_ino), kept across rewrites,
#: shared by hard links; the server installs each upload as a new file and its file
#: system (ext4) hands the freed number to the next file created. Prints the relations
#: between names (which share a number), never the numbers.
PY_INODES = """
import os, sys
r = sys.argv[1] + "/ino"
os.mkdir(r)
def w(name, data=b"x", mode="wb"):
    with open(f"{r}/{name}", mode) as f:
        f.write(data)
def key(n):
    st = os.stat(f"{r}/{n}")
    return (st.st_dev, st.st_ino)
with open(f"{r}/big", "wb") as f:  # truncate -s, then dd conv=notrunc, then cp
    f.truncate(1 << 16)
k = key("big")
w("big", b"data", "r+b")
print("a write keeps the number", key("big") == k)
w("copy", open(f"{r}/big", "rb").read())
for i in range(6):  # create, rewrite, remove, create again
    w(f"f{i}", b"v1" * i)
    w(f"f{i}", b"v2" * i)
for i in range(0, 6, 2):
    os.unlink(f"{r}/f{i}")
for i in range(6):
    w(f"g{i}", b"new" * i)
w("t1", b"one"); w("tgt", b"old")
k = key("t1")
os.rename(f"{r}/t1", f"{r}/tgt")
print("a rename keeps the number", key("tgt") == k)
w("tgt", b"rewritten")
w("after")
w("h1", b"hard")
os.link(f"{r}/h1", f"{r}/h2")
w("h2", b"rewritten through h2")
os.truncate(f"{r}/copy", 10)
w("h3", b"late")
os.mkdir(f"{r}/dir1"); os.rmdir(f"{r}/dir1"); os.mkdir(f"{r}/dir2")
fd = os.open(f"{r}/big", os.O_RDONLY)
w("big", b"again", "r+b")
print("fstat is stat", (os.fstat(fd).st_dev, os.fstat(fd).st_ino) == key("big"))
os.close(fd)
names = sorted(os.listdir(r))
groups = {}
for n in names:
    groups.setdefault(key(n), []).append(n)
print("shared:", sorted(" ".join(g) for g in groups.values() if len(g) > 1))
print(len(groups), "numbers for", len(names), "names")
with os.scandir(r) as it:
    print("d_ino is st_ino", all(e.inode() == key(e.name)[1] for e in it if e.name in names))
"""

#: Names are bytes: one that is not UTF-8 is created, listed, opened, renamed, linked
#: to and pointed at, as on a local file system.
PY_RAW_NAMES = """
import os, sys
r = os.fsencode(sys.argv[1])
n1, n2, n3 = b"raw-\\xff\\xfe", b"\\xe9t\\xe9", b"sub-\\x80"
with open(r + b"/" + n1, "wb") as f:
    f.write(b"one\\n")
os.mkdir(r + b"/" + n3)
with open(r + b"/" + n3 + b"/" + n2, "wb") as f:
    f.write(b"two\\n")
print(sorted(os.listdir(r)))
print(sorted(os.listdir(os.fsdecode(r))))  # the str form: surrogateescape
print(os.listdir(r + b"/" + n3), open(r + b"/" + n1, "rb").read())
os.rename(r + b"/" + n1, r + b"/" + n3 + b"/moved-\\xfa")
os.symlink(b"target-\\xfb", r + b"/lnk-\\xfc")
print(os.readlink(r + b"/lnk-\\xfc"), os.path.lexists(r + b"/lnk-\\xfc"))
os.symlink(n3 + b"/" + n2, r + b"/to-\\xfd")
print(open(r + b"/to-\\xfd", "rb").read(), os.stat(r + b"/to-\\xfd").st_size)
os.chdir(r + b"/" + n3)
print(sorted(os.listdir(b".")), os.getcwd().endswith(os.fsdecode(n3)))
for dirpath, dirnames, filenames in sorted(os.walk(r)):
    print(dirpath[len(r):], sorted(dirnames), sorted(filenames))
os.unlink(r + b"/" + n3 + b"/" + n2)
print(sorted(os.listdir(r + b"/" + n3)))
"""

#: st_blocks is the repository's allocation (what du counts), after a read too.
PY_BLOCKS = """
import os, sys
r = sys.argv[1]
for n in ("a.txt", "seed.bin", "d", "sparse", "link"):
    st = os.lstat(f"{r}/{n}")
    print(n, st.st_blocks, st.st_blksize)
with open(f"{r}/seed.bin", "rb") as f:
    f.read()
    print(os.fstat(f.fileno()).st_blocks, os.stat(f"{r}/seed.bin").st_blocks)
print(os.stat(f"{r}/sparse").st_blocks, os.path.getsize(f"{r}/sparse"))
with open(f"{r}/sparse", "rb") as f:
    f.read(10)
    print(os.fstat(f.fileno()).st_blocks)
"""


def build_sparse(root: Path) -> None:
    """The standard tree plus ``sparse``: 1 MiB with one written block at its end."""
    build_standard(root)
    with open(root / "sparse", "wb") as f:
        f.seek(1024 * 1024 - 4)
        f.write(b"end\n")
    _fix_times(root)


#: A trailing slash on a new name: only mkdir makes a directory (ENOENT, EISDIR for O_CREAT).
PY_SLASH_NEW = PY_EDGE + """
t("symlink new/", lambda: os.symlink("x", f"{r}/new1/"))
t("mknod new/", lambda: os.mknod(f"{r}/new2/", REG))
t("link new/", lambda: os.link(f"{r}/a.txt", f"{r}/new3/"))
t("mkdir new/", lambda: os.mkdir(f"{r}/new4/"))
t("creat new/", lambda: os.open(f"{r}/new5/", os.O_CREAT | os.O_WRONLY))
t("O_CREAT|O_EXCL new/", lambda: os.open(f"{r}/new5/", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
t("symlink missing/new/", lambda: os.symlink("x", f"{r}/nope/x/"))
t("rename file to new/", lambda: os.rename(f"{r}/lines.txt", f"{r}/new6/"))
t("rename file/ to new", lambda: os.rename(f"{r}/lines.txt/", f"{r}/new6"))
t("exchange with file/", lambda: renameat2(f"{r}/d/b.txt", f"{r}/exec.sh/", 2))
t("rename dir to new/", lambda: os.rename(f"{r}/d/empty", f"{r}/new7/"))
print(sorted(os.listdir(r)))
"""

#: A trailing slash on an existing name: EEXIST for creators whatever it is, and
#: no final symlink followed by mkdir, unlink, rmdir, rename.
PY_SLASH_EXISTING = PY_EDGE + """
for name in ("a.txt", "d", "link", "dlink", "dangling"):
    t(f"mkdir {name}/", lambda: os.mkdir(f"{r}/{name}/"))
    t(f"symlink {name}/", lambda: os.symlink("x", f"{r}/{name}/"))
    t(f"mknod {name}/", lambda: os.mknod(f"{r}/{name}/", REG))
    t(f"link to {name}/", lambda: os.link(f"{r}/d/b.txt", f"{r}/{name}/"))
    t(f"unlink {name}/", lambda: os.unlink(f"{r}/{name}/"))
    t(f"rmdir {name}/", lambda: os.rmdir(f"{r}/{name}/"))
    t(f"creat {name}/", lambda: os.open(f"{r}/{name}/", os.O_CREAT | os.O_WRONLY))
    t(f"open {name}/", lambda: os.open(f"{r}/{name}/", os.O_RDONLY))
t("link from file/", lambda: os.link(f"{r}/d/b.txt/", f"{r}/new8"))
t("rename file over file/", lambda: os.rename(f"{r}/d/b.txt", f"{r}/a.txt/"))
t("rename file over dir/", lambda: os.rename(f"{r}/d/b.txt", f"{r}/e/"))
print(sorted(os.listdir(r)))
"""

#: O_PATH: open(2) ignores the flags it does not keep, openat2(2) refuses them (EINVAL).
PY_O_PATH = PY_EDGE + """
for name, fl in [("O_TRUNC", os.O_TRUNC), ("O_WRONLY", os.O_WRONLY), ("O_RDWR", os.O_RDWR),
                 ("O_CREAT", os.O_CREAT), ("O_CREAT|O_EXCL", os.O_CREAT | os.O_EXCL),
                 ("O_APPEND", os.O_APPEND), ("O_TMPFILE|O_RDWR", TMP | os.O_RDWR),
                 ("O_NONBLOCK", os.O_NONBLOCK), ("O_NOATIME", os.O_NOATIME)]:
    for what in ("d", "a.txt"):
        t(f"open {what} O_PATH|{name}", lambda: os.open(f"{r}/{what}", os.O_PATH | fl))
        t(f"openat2 {what} O_PATH|{name}", lambda: openat2(f"{r}/{what}", os.O_PATH | fl))
t("open missing O_PATH|O_CREAT", lambda: os.open(f"{r}/new9", os.O_PATH | os.O_CREAT))
t("open file O_PATH|O_DIRECTORY", lambda: os.open(f"{r}/a.txt", os.O_PATH | os.O_DIRECTORY))
t("open link O_PATH|O_NOFOLLOW|O_TRUNC",
  lambda: os.open(f"{r}/link", os.O_PATH | os.O_NOFOLLOW | os.O_TRUNC))
print(os.path.getsize(f"{r}/a.txt"), sorted(os.listdir(r)))
"""

#: An O_PATH fd is no fd for I/O: fchmod, fchown, futimens and the f*xattr calls are EBADF
#: (they changed the file), while the *at forms with AT_EMPTY_PATH work; unknown flags
#: of faccessat2, linkat and utimensat are EINVAL (session 10).
PY_O_PATH_FD_OPS = PY_EDGE + """
def sc(*a):
    if libc.syscall(*a) < 0:
        raise OSError(ctypes.get_errno(), "")
for what, fl in (("a.txt", os.O_PATH), ("link", os.O_PATH | os.O_NOFOLLOW), ("d", os.O_PATH)):
    fd = os.open(f"{r}/{what}", fl)
    t(f"{what} fchmod", lambda: os.fchmod(fd, 0o600))
    t(f"{what} fchown", lambda: os.fchown(fd, os.getuid(), os.getgid()))
    t(f"{what} futimens", lambda: os.utime(fd, (1, 2)))
    t(f"{what} fgetxattr", lambda: os.getxattr(fd, "user.x"))
    t(f"{what} fsetxattr", lambda: os.setxattr(fd, "user.x", b"1"))
    t(f"{what} flistxattr", lambda: os.listxattr(fd))
    t(f"{what} fremovexattr", lambda: os.removexattr(fd, "user.x"))
    t(f"{what} utimensat empty", lambda: sc(280, fd, b"", None, 0x1000))
    t(f"{what} fstat", lambda: os.fstat(fd) and None)
    os.close(fd)
p = f"{r}/a.txt".encode()
t("faccessat2 bad flag", lambda: sc(439, -100, p, 0, 0x8000))
t("linkat bad flag", lambda: sc(265, -100, p, -100, f"{r}/new12".encode(), 0x8000))
t("utimensat bad flag", lambda: sc(280, -100, p, None, 0x8000))
print(oct(os.stat(f"{r}/a.txt").st_mode), sorted(os.listdir(r)))
"""

#: openat2's open_how size: more than the kernel knows only when the rest is zero, at most
#: a page (E2BIG; review round 12, finding 15), less than its 24 bytes EINVAL.
PY_OPENAT2_SIZE = PY_EDGE + """
def raw(path, how, size):
    buf = ctypes.create_string_buffer(how, max(len(how), 1))
    fd = libc.syscall(437, -100, path.encode(), buf, size)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "openat2")
    return fd
base = struct.pack("QQQ", os.O_RDONLY, 0, 0)
for what in ("a.txt", "d"):
    p = f"{r}/{what}"
    t(f"{what} 24", lambda: raw(p, base, 24))
    t(f"{what} 32 zero", lambda: raw(p, base + bytes(8), 32))
    t(f"{what} 32 set", lambda: raw(p, base + b"\\1" + bytes(7), 32))
    t(f"{what} page", lambda: raw(p, base + bytes(4096 - 24), 4096))
    t(f"{what} page+1", lambda: raw(p, base + bytes(4097 - 24), 4097))
    t(f"{what} 1 MiB", lambda: raw(p, base + bytes((1 << 20) - 24), 1 << 20))
    t(f"{what} 16", lambda: raw(p, base, 16))
"""

#: O_TMPFILE: the flag combinations the kernel refuses (EINVAL before any lookup)
#: and lookups that fail; the valid ones are py_tmpfile (a documented divergence).
PY_O_TMPFILE = PY_EDGE + """
t("tmpfile dir O_RDONLY", lambda: os.open(r, TMP | os.O_RDONLY, 0o600))
t("tmpfile dir O_RDWR|O_CREAT", lambda: os.open(r, TMP | os.O_RDWR | os.O_CREAT, 0o600))
t("tmpfile without O_DIRECTORY", lambda: os.open(r, (TMP & ~os.O_DIRECTORY) | os.O_RDWR, 0o600))
t("tmpfile file O_RDWR", lambda: os.open(f"{r}/a.txt", TMP | os.O_RDWR, 0o600))
t("tmpfile missing O_RDWR", lambda: os.open(f"{r}/new10", TMP | os.O_RDWR, 0o600))
t("tmpfile missing O_RDONLY", lambda: os.open(f"{r}/new10", TMP | os.O_RDONLY, 0o600))
t("openat2 tmpfile dir O_RDONLY", lambda: openat2(r, TMP | os.O_RDONLY, 0o600))
t("openat2 mode without create", lambda: openat2(f"{r}/a.txt", os.O_RDONLY, 0o600))
for what in ("new11", "d", "a.txt"):
    t(f"O_CREAT|O_DIRECTORY {what}", lambda: os.open(f"{r}/{what}", os.O_CREAT | os.O_DIRECTORY))
print(sorted(os.listdir(r)))
"""

#: openat2's confinement flags (RESOLVE_*): a guest that confines itself stays
#: confined, with the kernel's errnos, from a dirfd on the root and on d. Leaving
#: the tree with RESOLVE_NO_XDEV is not compared: /data is another mount under
#: synthfs (EXDEV) and a plain directory natively.
PY_RESOLVE = PY_EDGE + """
BENEATH, IN_ROOT, NO_SYM, NO_MAGIC, NO_XDEV, CACHED = 0x08, 0x10, 0x04, 0x02, 0x01, 0x20
def at2(dirfd, path, flags, res, mode=0):
    how = struct.pack("QQQ", flags, mode, res)
    fd = libc.syscall(437, dirfd, path.encode(), how, len(how))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "openat2")
    data = os.read(fd, 20) if flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_PATH else b""
    os.close(fd)
    return data
top = os.open(r, os.O_PATH | os.O_DIRECTORY)
d = os.open(f"{r}/d", os.O_PATH | os.O_DIRECTORY)
R = os.O_RDONLY
for name, res in [("BENEATH", BENEATH), ("IN_ROOT", IN_ROOT), ("NO_SYMLINKS", NO_SYM),
                  ("NO_MAGICLINKS", NO_MAGIC), ("NO_XDEV", NO_XDEV),
                  ("NO_SYMLINKS|BENEATH", NO_SYM | BENEATH)]:
    for base, bname in ((top, "root"), (d, "d")):
        for path in ("a.txt", "d/b.txt", "d/../a.txt", "link", "dlink/b.txt", "d/up", "up",
                     "../a.txt", "../../../b.txt", "/b.txt", "sub/../b.txt", "dangling",
                     f"/proc/self/fd/{d}/b.txt"):
            if res == NO_XDEV and path.startswith("../"):
                continue  # leaves the tree: see above
            t(f"{name} {bname} {path.replace(str(d), 'D')}", lambda: at2(base, path, R, res))
    t(f"{name} link O_NOFOLLOW", lambda: at2(top, "link", os.O_PATH | os.O_NOFOLLOW, res))
    t(f"{name} new O_CREAT", lambda: at2(d, "new_" + name, os.O_CREAT | os.O_WRONLY, res, 0o644))
t("BENEATH|IN_ROOT", lambda: at2(top, "a.txt", R, BENEATH | IN_ROOT))
t("CACHED O_CREAT", lambda: at2(top, "c", os.O_CREAT | os.O_WRONLY, CACHED, 0o644))
t("CACHED O_TRUNC", lambda: at2(top, "a.txt", os.O_TRUNC | os.O_WRONLY, CACHED))
t("unknown resolve bit", lambda: at2(top, "a.txt", R, 0x40))
print(sorted(os.listdir(r)), sorted(os.listdir(f"{r}/d")))
"""

#: NAME_MAX: rename and link look the source up before the new name, and a
#: long name in the middle of a path fails the walk.
PY_NAME_MAX = PY_EDGE + """
t("rename missing to long", lambda: os.rename(f"{r}/missing", f"{r}/{L}"))
t("rename missing to 256", lambda: os.rename(f"{r}/missing", f"{r}/" + "b" * 256))
t("rename long to missing", lambda: os.rename(f"{r}/{L}", f"{r}/x"))
t("rename file to long", lambda: os.rename(f"{r}/lines.txt", f"{r}/{L}"))
t("rename missing to long/x", lambda: os.rename(f"{r}/missing", f"{r}/{L}/x"))
t("rename missing to 5000 bytes", lambda: os.rename(f"{r}/missing", f"{r}/" + "c/" * 2500))
t("rename file to missing/long", lambda: os.rename(f"{r}/lines.txt", f"{r}/missing/{L}"))
t("link missing to long", lambda: os.link(f"{r}/missing", f"{r}/{L}"))
t("link file to long", lambda: os.link(f"{r}/a.txt", f"{r}/{L}"))
t("creat long", lambda: os.open(f"{r}/{L}", os.O_CREAT | os.O_WRONLY))
t("name of 200 2-byte chars", lambda: open(f"{r}/" + "\\u00e9" * 200, "w"))
for op, f in [("mkdir", os.mkdir), ("unlink", os.unlink), ("stat", os.stat),
              ("symlink", lambda p: os.symlink("x", p))]:
    t(f"{op} long", lambda: f(f"{r}/{L}"))
print(sorted(os.listdir(r)))
"""

#: '.', '..' and '' as the name, '.' after a non-directory, O_DIRECTORY on symlinks.
PY_DOT_NAMES = PY_EDGE + """
ops = [("mkdir", os.mkdir), ("rmdir", os.rmdir), ("unlink", os.unlink),
       ("symlink", lambda p: os.symlink("x", p)), ("mknod", lambda p: os.mknod(p, REG)),
       ("link", lambda p: os.link(f"{r}/a.txt", p)),
       ("rename-from", lambda p: os.rename(p, f"{r}/d/b.txt")),
       ("rename-to", lambda p: os.rename(f"{r}/exec.sh", p)),
       ("rename-dir-to", lambda p: os.rename(f"{r}/d/sub", p))]
for op, f in ops:
    t(f"{op} ''", lambda: f(""))
    for where in ("e", "d/sub"):
        for last in (".", "..", "./", "../", ""):
            t(f"{op} {where}/{last}", lambda: f(f"{r}/{where}/{last}"))
t("stat file/.", lambda: os.stat(f"{r}/a.txt/."))
t("symlink link-to-file/.", lambda: os.symlink("x", f"{r}/link/."))
t("noreplace onto file/.", lambda: renameat2(f"{r}/d/b.txt", f"{r}/a.txt/.", 1))
t("O_DIRECTORY link-to-file", lambda: os.open(f"{r}/link", os.O_RDONLY | os.O_DIRECTORY))
t("O_DIRECTORY|O_NOFOLLOW dlink",
  lambda: os.open(f"{r}/dlink", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
t("O_TRUNC dir", lambda: os.open(f"{r}/d", os.O_TRUNC | os.O_RDONLY))
os.chdir(f"{r}/e")
for op, f in [("rmdir", os.rmdir), ("unlink", os.unlink), ("mkdir", os.mkdir)]:
    for name in (".", ".."):
        t(f"cwd {op} {name}", lambda: f(name))
os.chdir("/")
print(sorted(os.listdir(r)), sorted(os.listdir(f"{r}/d")), sorted(os.listdir(f"{r}/e")))
"""

#: O_TMPFILE that the kernel accepts: an unnamed file in a directory.
PY_TMPFILE = """
import os, sys
r = sys.argv[1]
fd = os.open(r, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fd, b"unnamed\\n"); os.close(fd)
print(sorted(os.listdir(r)))
"""

PY_MMAP = """
import mmap, sys
r = sys.argv[1]
with open(f"{r}/seed.bin", "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    print(len(m), m[100:108].hex(), m[-4:].hex()); m.close()
with open(f"{r}/mm.bin", "w+b") as f:
    f.truncate(8192)
    m = mmap.mmap(f.fileno(), 8192)
    m[0:5] = b"hello"; m[4096:4100] = b"page"; m.flush(); m.close()
print(open(f"{r}/mm.bin", "rb").read(5))
"""

PY_META = """
import os, stat, sys
r = sys.argv[1]
os.chmod(f"{r}/a.txt", 0o600); os.chmod(f"{r}/d", 0o750); os.chmod(f"{r}/exec.sh", 0o755)
os.truncate(f"{r}/lines.txt", 10)
with open(f"{r}/private.txt", "r+") as f:
    os.ftruncate(f.fileno(), 3); os.fchmod(f.fileno(), 0o640)
os.utime(f"{r}/lines.txt", ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
st = os.stat(f"{r}/lines.txt")
print(st.st_mtime_ns, st.st_size)
for n in ("a.txt", "d", "exec.sh", "private.txt"):
    print(n, stat.filemode(os.stat(f"{r}/{n}").st_mode))
x = f"{r}/exec.sh"
print(os.access(x, os.X_OK), os.access(f"{r}/a.txt", os.R_OK), os.access(f"{r}/missing", os.F_OK))
"""

PY_CONSISTENT = """
import os, sys
r = sys.argv[1]
dfd = os.open(r, os.O_RDONLY | os.O_DIRECTORY)
entries = {e.name: e for e in os.scandir(r)}
for name in ("a.txt", "d", "seed.bin", "link", "dlink", "e"):
    p = f"{r}/{name}"
    s, l = os.stat(p), os.lstat(p)
    fd = os.open(p, os.O_RDONLY); f = os.fstat(fd); os.close(fd)
    a = os.stat(name, dir_fd=dfd); al = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    same = lambda x, y: (x.st_ino, x.st_dev, x.st_mode, x.st_size, x.st_mtime_ns, x.st_nlink) == (
        y.st_ino, y.st_dev, y.st_mode, y.st_size, y.st_mtime_ns, y.st_nlink)
    print(name, "stat=fstat", same(s, f), "stat=statat", same(s, a), "lstat=lstatat", same(l, al),
          "scandir ino", entries[name].inode() == l.st_ino, "link differs", l.st_ino != s.st_ino)
print("root dev", os.stat(r).st_dev == os.stat(f"{r}/a.txt").st_dev)
"""

PY_FD_PATHS = """
import os, sys
r = sys.argv[1]
fd = os.open(f"{r}/d/b.txt", os.O_RDONLY)
print(os.readlink(f"/proc/self/fd/{fd}"))
os.chdir(f"{r}/d/sub")
print(os.getcwd()); print(os.readlink("/proc/self/cwd"))
print(open("c.txt").read(), end=""); print(open("../b.txt").read(), end="")
print(sorted(os.listdir("..")))
dfd = os.open("..", os.O_RDONLY | os.O_DIRECTORY)
print(os.readlink(f"/proc/self/fd/{dfd}"))
print(open("b.txt", opener=lambda p, fl: os.open(p, fl, dir_fd=dfd)).read(), end="")
os.fchdir(dfd); print(os.getcwd())
print(os.path.realpath("up"), os.path.abspath("sub"))
with open("/proc/self/cwd/sub/c.txt") as f: print(f.read(), end="")
"""

PY_SPAWN_MANY = """
import subprocess, sys
r = sys.argv[1]
# CPython spawns with vfork where it can: 60 short-lived children, each reading /data
outs = [subprocess.run(["cat", f"{r}/a.txt"], capture_output=True).stdout for _ in range(60)]
print(len(outs), len(set(outs)), outs[0])
subprocess.run(["sh", "-c", f"echo from-child > {r}/child.txt"], check=True)
"""

PY_SQLITE_WAL = """
import sqlite3, sys
r = sys.argv[1]
db = sqlite3.connect(f"{r}/wal.db")
print(db.execute("pragma journal_mode=wal").fetchone())
db.execute("create table t(k integer primary key, v text)")
with db:
    db.executemany("insert into t(v) values (?)", [(f"v{i}",) for i in range(500)])
other = sqlite3.connect(f"{r}/wal.db")
print(other.execute("select count(*), min(v), max(v) from t").fetchone())
other.close()
db.execute("pragma wal_checkpoint(truncate)")
db.execute("pragma journal_mode=delete")
db.close()
"""

SQL_CREATE = (
    "create table t(k integer primary key, v text); "
    "insert into t(v) values ('alpha'),('beta'),('gamma'); create index iv on t(v);"
)
SQL_QUERY = "update t set v='BETA' where k=2; select * from t order by k; pragma integrity_check;"

TAR_C = "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu"

#: execveat(AT_SYMLINK_NOFOLLOW) on a symlink, then on a directory (the kernel's errnos).
PY_EXECVEAT_NOFOLLOW = (
    "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
    "argv = (ctypes.c_char_p * 2)(b'x', None); "
    "[print(n, libc.syscall(322, -100, n, argv, None, 0x100), os.strerror(ctypes.get_errno())) "
    "for n in (b'run-link', b'build-aux', b'run.sh/')]"
)

#: the utime family with a NULL path: it names the fd itself (futimens); with AT_FDCWD
#: (utimes too) it is EFAULT and changes nothing (synthfs set the cwd's times, and took
#: flags on a /data fd: found by a fuzzer, review round 9)
PY_UTIMES_NULL = """
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
tv = ctypes.create_string_buffer(struct.pack("<qqqq", 1_000_000_000, 0, 1_000_000_000, 0))
ts = ctypes.create_string_buffer(struct.pack("<qqqq", 1_100_000_000, 0, 1_100_000_000, 0))
fd = os.open("a.txt", os.O_RDONLY)
def show(name, r):
    print(name, r, os.strerror(ctypes.get_errno()) if r < 0 else "",
          int(os.stat(".").st_mtime) in (1_000_000_000, 1_100_000_000),
          int(os.stat("a.txt").st_mtime))
show("utimes", libc.syscall(235, None, tv))
show("futimesat fd", libc.syscall(261, fd, None, tv))
show("futimesat cwd", libc.syscall(261, -100, None, tv))
show("utimensat cwd", libc.syscall(280, -100, None, ts, 0))
show("utimensat cwd flags", libc.syscall(280, -100, None, ts, 0x100))
show("utimensat fd flags", libc.syscall(280, fd, None, ts, 0x100))
show("utimensat fd", libc.syscall(280, fd, None, ts, 0))
"""

#: open(O_CREAT) until the fd table is full: the open that fails with EMFILE creates
#: nothing (synthfs created the name in the repository first: issue #20, item 5)
PY_CREATE_EMFILE = """
import errno, os, resource, sys
r = sys.argv[1]
os.mkdir(f"{r}/many")
free = 12
held = len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd is closed again
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (held + free, hard))
fds = []
for i in range(free + 5):
    try:
        fds.append(os.open(f"{r}/many/f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError as exc:
        print(i, errno.errorcode[exc.errno])
for fd in fds:
    os.close(fd)
print(len(fds), sorted(os.listdir(f"{r}/many"), key=lambda n: int(n[1:])))
"""

CASES: list[Case] = [
    # -- listing
    Case("ls_1a", ("ls", "-1a", "{root}")),
    Case("ls_1aR", ("ls", "-1aR", "{root}")),
    Case("ls_la", ("ls", "-la", "--time-style=+%s", "{root}"), norm=ls_long),
    Case("ls_la_subdir", ("ls", "-la", "--time-style=+%s", "{root}/d"), norm=ls_long),
    Case(
        "ls_ln_files",
        (
            "ls",
            "-ln",
            "--time-style=+%s",
            "{root}/a.txt",
            "{root}/exec.sh",
            "{root}/private.txt",
            "{root}/link",
            "{root}/seed.bin",
            "{root}/d/up",
        ),
    ),
    Case("ls_cwd_relative", ("ls", "-1aR", ".", "../e"), cwd="d"),
    Case("ls_F_dereference", ("ls", "-1F", "{root}", "{root}/dlink/")),
    # -- reading
    Case(
        "cat",
        (
            "cat",
            "{root}/a.txt",
            "{root}/d/b.txt",
            "{root}/link",
            "{root}/d/up",
            "{root}/dlink/sub/c.txt",
        ),
    ),
    Case("cat_redirect_binary", sh("cat {root}/seed.bin {root}/seed.bin > {root}/double.bin")),
    Case("head", sh("head -n 3 {root}/lines.txt && head -c 20 {root}/seed.bin | od -An -tx1")),
    Case("tail", sh("tail -n 2 {root}/lines.txt {root}/a.txt && tail -c 7 {root}/lines.txt")),
    Case("wc", sh("wc {root}/lines.txt {root}/a.txt {root}/seed.bin && wc -l < {root}/lines.txt")),
    Case("sha256sum", ("sha256sum", "{root}/a.txt", "{root}/seed.bin", "{root}/link")),
    Case("sha256sum_check_cwd", ("sha256sum", "-c", "sums.txt"), cwd="."),
    Case("grep_r", ("grep", "-rn", "needle", "{root}"), norm=sort_lines),
    Case("grep_rl_count", sh("grep -rl needle {root} | sort && grep -c fox {root}/lines.txt")),
    Case(
        "stat_files",
        (
            "stat",
            "-c",
            "%n %s %F %a %h",
            "{root}/a.txt",
            "{root}/link",
            "{root}/seed.bin",
            "{root}/exec.sh",
            "{root}/private.txt",
        ),
    ),
    Case("stat_dirs", ("stat", "-c", "%n %F %a", "{root}", "{root}/d", "{root}/dlink", "{root}/e")),
    Case("stat_L", ("stat", "-L", "-c", "%n %s %F %a", "{root}/link", "{root}/d/up")),
    Case("stat_times", ("stat", "-c", "%n %Y %y", "{root}/a.txt", "{root}/d/b.txt")),
    Case("find", ("find", "{root}"), norm=sort_lines),
    Case("find_printf", ("find", "{root}", "-printf", "%y %m %p %l\\n"), norm=sort_lines),
    Case(
        "find_type_size",
        ("find", "{root}", "-type", "f", "-name", "*.txt", "-printf", "%s %p\\n"),
        norm=sort_lines,
    ),
    Case("find_L", ("find", "-L", "{root}", "-type", "f"), norm=sort_lines),
    Case("find_delete", ("find", "{root}/d", "-name", "*.txt", "-delete")),
    Case("du_ab", ("du", "-ab", "{root}"), norm=du_apparent),
    Case("readlink", ("readlink", "{root}/link", "{root}/d/up", "{root}/dangling", "{root}/dlink")),
    Case("realpath", ("realpath", "{root}/link", "{root}/d/up", "{root}/dlink/sub", "{root}/d/..")),
    # -- writing
    Case(
        "cp_r",
        sh(
            "cp -r {root}/d {root}/d2 && cp {root}/a.txt {root}/e/ && cp -a {root}/e {root}/e2"
            " && diff -r {root}/d {root}/d2 && echo same"
        ),
    ),
    Case(
        "mv",
        sh(
            "mv {root}/a.txt {root}/d/a2.txt && mv {root}/d {root}/dd && "
            "mv {root}/dd/sub/c.txt {root}/c.txt && mv -v {root}/e {root}/dd/ && ls -1R {root}"
        ),
    ),
    Case("rm_r", sh("rm -r {root}/d && rm -f {root}/link {root}/missing && rm -rfv {root}/e")),
    Case(
        "mkdir_p",
        sh("mkdir -p {root}/x/y/z {root}/d/sub && mkdir -m 700 {root}/m && mkdir -pv {root}/v/w"),
    ),
    Case("touch", ("touch", "{root}/new", "{root}/a.txt", "{root}/d/sub/new2")),
    Case(
        "touch_times",
        sh(
            "touch -d @1234567890 {root}/a.txt {root}/newt && "
            "touch -m -d '2020-01-01 00:00:00' {root}/d/b.txt && "
            "stat -c '%n %Y' {root}/a.txt {root}/newt {root}/d/b.txt"
        ),
        times=True,
    ),
    Case(
        "ln_s",
        sh(
            "ln -s a.txt {root}/l1 && ln -s ../d/b.txt {root}/e/l2 && "
            "ln -sf b.txt {root}/d/up && readlink {root}/l1 {root}/e/l2 {root}/d/up && "
            "readlink -f {root}/l1 {root}/dlink/sub && cat {root}/l1 {root}/e/l2 {root}/d/up"
        ),
    ),
    Case(
        "chmod",
        sh(
            "chmod 600 {root}/a.txt && chmod -R go-rx {root}/d && chmod +x {root}/lines.txt"
            " && stat -c '%n %a' {root}/a.txt {root}/d {root}/d/b.txt {root}/lines.txt"
        ),
    ),
    Case(
        "truncate",
        sh(
            "truncate -s 5 {root}/a.txt && truncate -s 100k {root}/sparse && "
            "truncate -s +3 {root}/lines.txt && wc -c {root}/a.txt {root}/sparse"
        ),
    ),
    Case("sed_i", ("sed", "-i", "s/hello/HELLO/", "{root}/a.txt", "{root}/private.txt")),
    Case(
        "append_redirect",
        sh(
            "echo one >> {root}/a.txt; echo two >> {root}/a.txt; "
            "echo new > {root}/d/n.txt; cat {root}/a.txt {root}/d/n.txt"
        ),
    ),
    Case("umask_077", sh("umask 077 && touch {root}/u && mkdir {root}/ud && echo x > {root}/ux")),
    Case(
        "tar_create",
        sh(f"{TAR_C} -C {{root}} -cf {{root}}/out.tar d e link a.txt && tar -tvf {{root}}/out.tar"),
    ),
    Case(
        "tar_extract",
        sh(
            "mkdir {root}/x && tar -C {root}/x -xf {root}/in.tar && "
            "find {root}/x -printf '%y %m %p %l\\n' | sort"
        ),
        times=True,
    ),
    Case(
        "tar_roundtrip_gz",
        sh(
            f"{TAR_C} -C {{root}} -czf {{root}}/t.tgz d && mkdir {{root}}/y && "
            "tar -C {root}/y -xzf {root}/t.tgz"
        ),
    ),
    Case(
        "dd_fsync",
        ("dd", "if={root}/seed.bin", "of={root}/out", "bs=64k", "conv=fsync"),
        norm=dd_stats,
    ),
    Case(
        "dd_notrunc_skip",
        (
            "dd",
            "if={root}/seed.bin",
            "of={root}/a.txt",
            "bs=4k",
            "skip=3",
            "count=5",
            "conv=notrunc,fsync",
        ),
        norm=dd_stats,
    ),
    Case(
        "sqlite3",
        sh(
            f'sqlite3 {{root}}/db.sqlite "{SQL_CREATE}" && sqlite3 {{root}}/db.sqlite "{SQL_QUERY}"'
        ),
    ),
    Case(
        "sh_cd_pwd",
        sh(
            "cd {root}/d && pwd && ls && cd sub && pwd -P && /bin/pwd && ls -a .. "
            "&& cd ../../dlink && pwd && pwd -P && cd .. && pwd"
        ),
    ),
    Case(
        "host_symlink_into_tree",
        sh(
            "d=$(mktemp -d) && ln -s {root}/a.txt $d/l && ln -s {root}/d $d/dl && "
            "cat $d/l $d/dl/b.txt && ls $d/dl && echo via-host > $d/dl/new.txt; rm -r $d"
        ),
    ),
    Case(
        "mv_across_the_boundary",
        sh(
            "d=$(mktemp -d) && mv {root}/a.txt $d/ && mv {root}/d $d/ && cat $d/a.txt && "
            "mv $d/a.txt {root}/back.txt && mv $d/d {root}/d_back && rm -r $d && ls {root}"
        ),
    ),
    Case("cp_from_host", sh("cp /etc/os-release {root}/os && cp -r /etc/apt {root}/apt && "
                            "cmp /etc/os-release {root}/os && echo same")),
    Case("ln_hard", sh("ln {root}/a.txt {root}/hard && stat -c '%n %h %s' {root}/a.txt "
                       "{root}/hard && echo more >> {root}/hard && cat {root}/a.txt")),
    Case("ln_hard_tools", sh(
        "ln {root}/a.txt {root}/d/h && ln {root}/seed.bin {root}/s2 && "
        "[ {root}/a.txt -ef {root}/d/h ] && echo same && "
        "find {root} -samefile {root}/a.txt | sort && du -s {root} && du -s {root}/d && "
        "printf 'X\\n' > {root}/d/h && cat {root}/a.txt && ls -l {root}/a.txt | cut -c1-12 && "
        "cp -a {root}/d {root}/d2 && rm {root}/a.txt && stat -c '%n %h' {root}/d/h {root}/s2; "
        "ln {root}/d {root}/dl; ln {root}/s2 {root}/lines.txt; echo end"
    ), norm=lambda t, dirs: t),
    # Repository symlinks resolve as on a real mount (docs/namespace.md, [[mount]]
    # symlinks = "follow"): an absolute target from the guest's root, a relative one
    # climbing above the mount root onto the host (enough '..' to reach '/' from any
    # root: extra ones stay at '/', so both sides read the host's /etc/hostname).
    Case("ln_abs_to_host", sh("ln -s /etc/hostname {root}/h && cat {root}/h && readlink {root}/h"
                              " && [ -f {root}/h ] && ls -L {root}/h >/dev/null && echo file; "
                              "cat {root}/h/x; ln -s /etc {root}/etc && ls {root}/etc/hostname")),
    Case("ln_rel_climbing_out", sh(
        f"ln -s {'../' * 40}etc/hostname {{root}}/d/up_host && cat {{root}}/d/up_host && "
        f"ln -s {'../' * 40}etc {{root}}/d/up_etc && cat {{root}}/d/up_etc/hostname && "
        "cd {root}/d/up_etc && pwd -P && cd - >/dev/null && "
        "readlink -f {root}/d/up_host")),
    # A virtual environment on /data: its python is a symlink to the host's, and
    # sys.prefix comes from where the link is (pyvenv.cfg and the activate scripts
    # embed the venv's path, the native root's: compared by presence).
    Case("python_venv", sh(
        "python3 -m venv --without-pip {root}/venv && "
        "{root}/venv/bin/python -c 'import sys; print(sys.prefix, sys.prefix != sys.base_prefix)'"
        " && {root}/venv/bin/python3 -c 'import sys; print(sys.executable)' && ls {root}/venv/bin"
        " && . {root}/venv/bin/activate && python -c 'import sys; print(sys.prefix)'"),
        ignore=("venv/pyvenv.cfg", "venv/bin/activate", "venv/bin/activate.csh",
                "venv/bin/activate.fish"), needs=("python3",)),
    Case("du_tree", sh("du -s {root} && du -s {root}/d && du -a {root} | sort -k2 && "
                       "cat {root}/seed.bin > /dev/null && du -s {root}/seed.bin {root}/sparse "
                       "&& stat -c '%n %b %B' {root}/seed.bin {root}/sparse {root}/d"),
         tree=build_sparse),
    # Issue #20 item 6: a sparse file written on /data keeps its holes through the
    # upload; each command is its own process, so the later ones see what was uploaded.
    Case("sparse_write", sh(
        "truncate -s 64M {root}/big && "
        "dd if={root}/seed.bin of={root}/big bs=4096 count=1 seek=8192 conv=notrunc "
        "status=none && "
        "python3 -c 'import sys; f = open(sys.argv[1], \"wb\"); f.seek(32 << 20); "
        "f.write(b\"end\"); f.close()' {root}/py && "
        "cp --sparse=always {root}/big {root}/copy && "
        # one du for all three: du counts a (dev, ino) once across its arguments, so
        # it also checks that the rewritten big and the new copy show two numbers
        "stat -c '%n %s %b' {root}/big {root}/py {root}/copy && "
        "du -k {root}/big {root}/py {root}/copy && cmp {root}/big {root}/copy && echo same"),
        needs=("python3",)),
    Case("chmod_setuid", sh("chmod 4755 {root}/exec.sh && chmod 2755 {root}/a.txt && "
                            "stat -c '%n %A' {root}/exec.sh {root}/a.txt"),
         diverges="setuid and setgid bits are not stored in the repository (dropped, as on "
                  "a nosuid mount): it is a host directory, where they would run as the server"),
    Case("gzip_gunzip", sh("gzip -k {root}/lines.txt && gzip -t {root}/lines.txt.gz && "
                           "mv {root}/lines.txt.gz {root}/l.gz && gunzip -c {root}/l.gz | wc -l"),
         needs=("gzip",)),
    Case("sort_tee_split", sh("sort -r -o {root}/sorted {root}/lines.txt && "
                              "tee {root}/t1 {root}/t2 < {root}/a.txt && "
                              "split -l 7 {root}/lines.txt {root}/part. && ls {root}")),
    Case("install_m", ("install", "-m", "640", "-D", "{root}/a.txt", "{root}/inst/sub/a.txt")),
    Case("flock", ("flock", "{root}/lockfile", "-c", "echo locked")),
    Case("xargs_find_exec", sh("find {root}/d -type f -print0 | sort -z | xargs -0 cat && "
                               "find {root} -name '*.txt' -exec wc -c {} + | sort")),
    Case("git", sh(
        "cd {root} && git init -q -b main . && git add -A && "
        "git -c user.name=t -c user.email=t@e commit -q -m first && "
        "echo change >> a.txt && git status --short && git diff --stat && "
        "git -c user.name=t -c user.email=t@e commit -qam second && git log --format='%H %s'"
    ), ignore=(".git/index",), needs=("git",)),
    Case("bigdir", sh("ls -1 {root}/big | wc -l && ls -1 {root}/big | sha256sum && "
                      "find {root}/big -type f | wc -l && rm -r {root}/big/file-000*"),
         tree=build_bigdir),
    Case("odd_names", sh("ls -1a {root}/names && cat {root}/names/* && "
                         "find {root}/deep -name bottom.txt -exec cat {} + && "
                         "mv {root}/names/with\\ space {root}/names/moved && "
                         "cp {root}/names/raw-* {root}/names/copy-raw"),
         tree=build_odd_names),
    Case(
        "fork_writer",
        sh(
            "for i in 1 2 3; do (echo $i > {root}/f$i) & done; wait; "
            "cat {root}/f1 {root}/f2 {root}/f3"
        ),
    ),
    # -- executables stored in the tree (issue #19)
    Case("script_abs_and_relative", sh(
        "{root}/run.sh a 'b c' && cd {root} && ./run.sh d && sh -c './run.sh e f'"
    ), tree=build_scripts),
    Case("script_env_python_argv0", sh(
        "{root}/argv.py x && cd {root} && ./argv.py y"
    ), tree=build_scripts),
    Case("script_configure", sh("./configure --prefix=/opt/x"), tree=build_scripts, cwd="."),
    Case("script_interpreter_in_tree", sh(
        "./wrap.run 1 2; echo $?; ./via.run 3; echo $?; ./chain/n5 deep; echo $?"
    ), tree=build_scripts, cwd="."),
    # one script too many: the kernel's ELOOP, as each shell reports it
    Case("script_nesting_limit", sh("./chain/n6 x; echo sh=$?; "
                                    + PY + " -c \"import os; os.execv('chain/n6', ['n6'])\""),
         tree=build_scripts, cwd="."),
    # a #! line the kernel refuses: ENOEXEC, and sh runs the file itself
    Case("script_bad_shebang", sh(
        "for f in bad-empty bad-blank bad-long bad-missing noexec.sh bad-nested bad-interp-dir; "
        "do ./$f; echo $f=$?; done; bash -c './bad-missing; ./bad-interp-dir'; echo bash=$?; "
        + PY + " -c \"import os\nfor f in ('bad-empty', 'bad-long', 'bad-missing', 'noexec.sh',"
        " 'bad-nested', 'bad-interp-dir'):\n  try: os.execv(f, [f])\n"
        "  except OSError as e: print(f, e)\"; "
        + PY + f' -c "{PY_EXECVEAT_NOFOLLOW}"'
    ), tree=build_scripts, cwd=".", needs=("bash",)),
    Case("script_git_pre_commit_hook", sh(
        "cd {root} && git init -q -b main . && "
        "printf '#!/bin/sh\\necho \"pre-commit: $0 $#\" >&2\\ngit diff --cached --name-only"
        " | grep -q run.sh\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit && "
        "git add -A && git -c user.name=t -c user.email=t@e commit -q -m first && "
        "git log --format='%H %s'"
    ), tree=build_scripts, ignore=(".git/index",), needs=("git",)),
    Case("elf_in_tree", sh(
        "cd {root} && bin/echo hi && ./bin/cat a.txt && {root}/bin/readlink /proc/self/exe && "
        "./bin/cat /proc/self/cmdline | tr '\\0' ' ' && echo"
    ), tree=build_scripts),
    # -- python
    Case("py_io", py(PY_IO)),
    Case("py_pathlib", py(PY_PATHLIB)),
    Case("py_scandir_walk", py(PY_SCANDIR)),
    Case("py_shutil", py(PY_SHUTIL)),
    Case("py_json", py(PY_JSON)),
    Case("py_threads", py(PY_THREADS)),
    Case("py_errors", py(PY_ERRORS)),
    Case("py_errno_slash_new", py(PY_SLASH_NEW)),
    Case("py_errno_slash_existing", py(PY_SLASH_EXISTING)),
    Case("py_errno_o_path", py(PY_O_PATH)),
    Case("py_errno_openat2_size", py(PY_OPENAT2_SIZE)),
    Case("py_errno_o_path_fd_ops", py(PY_O_PATH_FD_OPS)),
    Case("py_errno_o_tmpfile", py(PY_O_TMPFILE)),
    Case("py_utimes_null", (PY, "-I", "-c", PY_UTIMES_NULL), cwd="."),
    Case("py_errno_name_max", py(PY_NAME_MAX)),
    Case("py_errno_openat2_resolve", py(PY_RESOLVE)),
    Case("py_errno_dot_names", py(PY_DOT_NAMES)),
    Case("py_tmpfile", py(PY_TMPFILE),
         diverges="O_TMPFILE on /data: EOPNOTSUPP (the repository holds no unnamed files)"),
    Case("py_mmap", py(PY_MMAP)),
    Case("py_links", py(PY_LINKS)),
    Case("py_inodes", py(PY_INODES)),
    Case("py_raw_names", py(PY_RAW_NAMES)),
    Case("py_blocks", py(PY_BLOCKS), tree=build_sparse),
    Case("py_meta", py(PY_META)),
    Case("py_stat_consistency", py(PY_CONSISTENT)),
    Case("py_fd_cwd_paths", py(PY_FD_PATHS)),
    Case("py_sqlite_wal", py(PY_SQLITE_WAL)),
    Case("py_spawn_many", py(PY_SPAWN_MANY)),
    # -- errors: same message, same status
    Case("err_cat_missing", ("cat", "{root}/missing")),
    Case("err_mkdir_existing", ("mkdir", "{root}/d")),
    Case("err_rmdir_nonempty", ("rmdir", "{root}/d")),
    Case("err_ls_enotdir", ("ls", "{root}/a.txt/x")),
    Case("err_rm_dir", ("rm", "{root}/d")),
    Case("err_touch_missing_parent", ("touch", "{root}/nope/x")),
    Case("err_cp_missing", ("cp", "{root}/missing", "{root}/x")),
    Case("err_mv_into_self", ("mv", "{root}/d", "{root}/d/sub/")),
    Case("err_grep_absent", ("grep", "-r", "absent-word", "{root}")),
    Case("err_cd_missing", sh("cd {root}/nope")),
    Case("err_ln_exists", ("ln", "-s", "x", "{root}/a.txt")),
    # -- the wrapper keeps the guest's world: status, signals, env, cwd
    Case("exit_status", sh("cat {root}/a.txt; exit 42")),
    Case("killed_by_signal", sh("cat {root}/a.txt; kill -9 $$")),
    # the caller's ignored and blocked signals, never the launcher's own (Python's SIGPIPE)
    Case("signal_dispositions", ("grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status")),
    Case("closed_pipe_kills_quietly", ("bash", "-c", "set -o pipefail; yes | head -1"),
         needs=("bash",)),
    Case("create_at_emfile", py(PY_CREATE_EMFILE)),
    Case("env_untouched", ("env",)),
    Case("cwd_untouched", ("/bin/pwd",)),
]


# -- running one side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side's result after normalisation: comparable with ==."""

    status: int
    stdout: str
    stderr: str
    tree: dict[str, helpers.Entry] = field(compare=False)

    def show(self) -> str:
        return f"exit {self.status}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def guest_dirs(tree: dict[str, helpers.Entry]) -> frozenset[str]:
    m = helpers.MOUNT
    return frozenset(m if r == "." else f"{m}/{r}" for r, e in tree.items() if e.kind == "dir")


def finish(
    case: Case, out: helpers.Outcome, root_shown: str, tree_root: Path, *, repo: bool = False
) -> Side:
    """Normalise one side's outcome and snapshot its tree.

    ``repo=True``: the tree is a repository served by synthfs, compared whole:
    the server keeps its state outside it, so it holds what the guest wrote
    and nothing else.
    """
    tree = helpers.snapshot(tree_root, times=case.times)
    # Files that embed host stat data (st_ino, st_dev, ctime: git's index) cannot
    # match byte for byte between two file systems: compare their presence only.
    for rel in case.ignore:
        if rel in tree:
            tree[rel] = helpers.Entry(tree[rel].kind, mode=tree[rel].mode)
    dirs = guest_dirs(tree)

    def norm(text: str) -> str:
        return case.norm(helpers.normalise_paths(text, root_shown), dirs)

    return Side(out.status, norm(out.stdout), norm(out.stderr), tree)


def env_for(home: Path) -> dict[str, str]:
    """ENV with HOME at a real directory shared by the runs being compared."""
    return {**ENV, "HOME": str(home)}


def run_case_native(case: Case, base: Path, outside: Path, home: Path) -> Side:
    """Build the tree under ``base`` and run the case natively on it, from cwd ``outside``.

    ``outside`` and ``home`` must be the same directories for the runs being
    compared (the guest's cwd and environment are part of what they print).
    """
    root = (base / "tree").resolve()
    case.tree(root)
    out = helpers.run_native(
        case.render(str(root)), cwd=outside, env=env_for(home), umask=case.umask
    )
    return finish(case, out, str(root), root)


def compare(case: Case, expected: Side, actual: Side, label: str = "synthfs") -> list[str]:
    """Every way ``actual`` differs from the native ``expected`` (empty: conformant)."""
    problems = []
    if expected.status != actual.status:
        problems.append(f"exit status: native {expected.status}, {label} {actual.status}")
    for name in ("stdout", "stderr"):
        e, a = getattr(expected, name), getattr(actual, name)
        if e != a:
            problems.append(f"{name} differs:\n--- native\n{e}--- {label}\n{a}")
    tree = helpers.diff_trees(expected.tree, actual.tree)
    if tree:
        problems.append("resulting tree differs (native -> " + label + "):\n  " + "\n  ".join(tree))
    return problems
