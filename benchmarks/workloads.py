"""The benchmark workloads (W1-W8 of issue #6) and their generated data.

Pure description plus one data generator. A workload is a shell command line
with a ``{data}`` placeholder for the directory as the tool under test sees it
(the real path natively, ``/data`` under synthfs, PRoot and bubblewrap, the
mount point for FUSE). The harness wraps it as ``sh -c CMD`` inside each tool,
so the same text runs everywhere and its output can be compared to native's.

Data is generated reproducibly from a fixed seed: the same :class:`Sizes` give
byte-identical trees on every machine. Generation is skipped when a stamp file
says the tree already matches the sizes.

Trusts: nothing it reads; it writes only under the two roots it is given.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import random
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import attrs

__all__ = [
    "PYTHON",
    "Root",
    "Sizes",
    "Workload",
    "generate",
    "workloads",
]

#: The interpreter the workloads run: the system one, present in every sandbox
#: (bubblewrap binds /usr only; a pyenv shim would measure bash, not python).
PYTHON = "/usr/bin/python3"

SEED = 20261127


class Root(enum.Enum):
    """Which data directory a workload works in."""

    NONE = "none"  # host paths only (W5, W7, start-up)
    DISK = "disk"  # the generated tree on the machine's disk
    TMPFS = "tmpfs"  # a directory on tmpfs (W4's second variant)


@attrs.frozen
class Sizes:
    """Every size the workloads use; :meth:`full` is issue #6's suite."""

    big_mib: int = 256  # W1
    tree_files: int = 10_000  # W2, W3, W6
    tree_dirs: int = 100
    tree_file_bytes: int = 1024
    w4_files: int = 1_000
    w4_file_bytes: int = 4096
    w5_runs: int = 10
    w7_getpid: int = 2_000_000
    w7_dd_blocks: int = 2_000_000
    sqlite_rows: int = 50_000  # W8
    git_files: int = 2_000
    c_modules: int = 12

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes for CI smoke runs (the harness runs, outputs agree)."""
        return cls(
            big_mib=8,
            tree_files=120,
            tree_dirs=6,
            w4_files=20,
            w5_runs=2,
            w7_getpid=10_000,
            w7_dd_blocks=10_000,
            sqlite_rows=2_000,
            git_files=40,
            c_modules=2,
        )

    def scaled(self, **changes: int) -> Sizes:
        return attrs.evolve(self, **changes)

    def to_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.frozen
class Workload:
    """One row of the suite.

    ``command`` and ``reset`` are shell text with ``{data}`` standing for the
    data directory as the tool sees it. ``reset`` runs through the same tool,
    untimed, before every run (so a tool whose writes go somewhere else, like
    a FUSE cache or runsc's overlay, is reset where it writes). ``prepare``
    is a host-side callable run untimed before every run (W1 cold). Output is
    compared with native's after the data path is replaced by ``<DATA>`` and
    every ``mask`` regex match by ``<MASKED>`` (only for values that are a
    property of the file system, never of the data: ``du``'s block count).
    """

    id: str
    title: str
    root: Root
    command: str
    reset: str = ""
    mask: tuple[str, ...] = ()
    note: str = ""
    #: only these tools run it (None: every tool that applies)
    only: tuple[str, ...] | None = None
    prepare: Callable[[Path], None] | None = attrs.field(default=None, eq=False)

    def render(self, text: str, data: str) -> str:
        return text.replace("{data}", shlex.quote(data))

    def normalise(self, output: str, data: str) -> str:
        out = output.replace(data, "<DATA>") if data else output
        for pattern in self.mask:
            out = re.sub(pattern, "<MASKED>", out, flags=re.MULTILINE)
        return "\n".join(line.rstrip() for line in out.strip().splitlines())


def _touch_big(root: Path) -> None:
    """W1 cold: give big.bin a new mtime (a new server version, so a cache miss)."""
    path = root / "big.bin"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def workloads(sizes: Sizes) -> list[Workload]:
    """The suite, in report order."""
    py_imports = "import json, email, email.parser, http.client, decimal"
    getpid = f"import os\ng = os.getpid\nfor _ in range({sizes.w7_getpid}): g()\nprint('ok')"
    when = "2026-01-01T00:00:00+0000"
    git_env = (
        "GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null "
        f"GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.org GIT_AUTHOR_DATE={when} "
        f"GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.org GIT_COMMITTER_DATE={when}"
    )
    return [
        Workload(
            "S0",
            "start-up: sh -c true",
            Root.NONE,
            "true",
            note="the sandbox's own start-up (synthfs: `synthfs run -- true`)",
        ),
        Workload(
            "W1",
            f"cat {sizes.big_mib} MiB file",
            Root.DISK,
            "cat {data}/big.bin > /dev/null && echo ok",
            note="synthfs: warm cache",
        ),
        Workload(
            "W1c",
            f"cat {sizes.big_mib} MiB file, cold",
            Root.DISK,
            "cat {data}/big.bin > /dev/null && echo ok",
            prepare=_touch_big,
            only=("native", "synthfs"),
            note="big.bin gets a new mtime before each run (synthfs: cache miss); "
            "other tools have no cache of their own, see W1",
        ),
        Workload(
            "W2",
            f"find | wc -l; du -s ({sizes.tree_files} files)",
            Root.DISK,
            "find {data}/tree -type f | wc -l && du -s {data}/tree",
            mask=(r"^\d+(?=\t)",),
            note="du's block count depends on the file system (masked in the check)",
        ),
        Workload(
            "W3",
            f"read {sizes.tree_files} files of {sizes.tree_file_bytes} B",
            Root.DISK,
            "cd {data} && find tree -type f -exec cat {} + | wc -c",
        ),
        Workload(
            "W4d",
            f"write+delete {sizes.w4_files} files of {sizes.w4_file_bytes} B (disk)",
            Root.DISK,
            _w4(sizes),
            reset="rm -rf {data}/w4",
        ),
        Workload(
            "W4t",
            f"write+delete {sizes.w4_files} files of {sizes.w4_file_bytes} B (tmpfs)",
            Root.TMPFS,
            _w4(sizes),
            reset="rm -rf {data}/w4",
        ),
        Workload(
            "W5",
            f"{sizes.w5_runs}x python3 -c 'import json, email, ...'",
            Root.NONE,
            f"i=0; while [ $i -lt {sizes.w5_runs} ]; do "
            f"{PYTHON} -c {shlex.quote(py_imports)} || exit 1; i=$((i+1)); done; echo ok",
        ),
        Workload(
            "W6",
            f"tar cf - | wc -c ({sizes.tree_files} files)",
            Root.DISK,
            "cd {data} && tar cf - tree | wc -c",
        ),
        Workload(
            "W7a",
            f"{sizes.w7_getpid:,} getpid in python",
            Root.NONE,
            f"{PYTHON} -c {shlex.quote(getpid)}",
        ),
        Workload(
            "W7b",
            f"dd bs=4k count={sizes.w7_dd_blocks:,} /dev/zero to /dev/null",
            Root.NONE,
            f"dd if=/dev/zero of=/dev/null bs=4k count={sizes.w7_dd_blocks} status=none && echo ok",
        ),
        Workload(
            "W8a",
            f"sqlite3: create {sizes.sqlite_rows:,} rows, query",
            Root.DISK,
            "sqlite3 {data}/w8/sqlite/db.sqlite < {data}/w8/sqlite/script.sql",
            reset="rm -f {data}/w8/sqlite/db.sqlite {data}/w8/sqlite/db.sqlite-journal",
        ),
        Workload(
            "W8b",
            f"git init, add -A, commit ({sizes.git_files:,} files)",
            Root.DISK,
            f"cd {{data}}/w8/gittree && export {git_env} && git init -q && git add -A && "
            "git commit -q -m bench && git rev-parse HEAD",
            reset="rm -rf {data}/w8/gittree/.git",
        ),
        Workload(
            "W8c",
            f"gcc, make -j2 ({sizes.c_modules + 1} C files)",
            Root.DISK,
            "make -s -C {data}/w8/cproj -j2 && {data}/w8/cproj/prog",
            reset="rm -f {data}/w8/cproj/*.o {data}/w8/cproj/prog",
        ),
    ]


def _w4(sizes: Sizes) -> str:
    # printf is a dash builtin: one process creates every file, so this times
    # file creation, not fork+exec.
    return (
        "mkdir {data}/w4 && cd {data}/w4 && "
        f"for i in $(seq {sizes.w4_files}); do printf '%{sizes.w4_file_bytes}s' '' > f$i; done && "
        "cd .. && find w4 -type f | wc -l && cat w4/* | wc -c && rm -r w4"
    )


# ---------------------------------------------------------------- generation


def _stamp(sizes: Sizes) -> str:
    return json.dumps({"seed": SEED, "version": 1, **sizes.to_dict()}, sort_keys=True)


def generate(disk_root: Path, tmpfs_root: Path, sizes: Sizes) -> None:
    """Create (or reuse) both data roots for ``sizes``; deterministic."""
    tmpfs_root.mkdir(parents=True, exist_ok=True)
    stamp_file = disk_root / ".bench-stamp"
    want = _stamp(sizes)
    if stamp_file.exists() and stamp_file.read_text() == want:
        return
    if disk_root.exists():
        shutil.rmtree(disk_root)
    disk_root.mkdir(parents=True)
    rng = random.Random(SEED)
    _write_big(disk_root / "big.bin", sizes.big_mib, rng)
    _write_tree(disk_root / "tree", sizes, rng)
    _write_sqlite(disk_root / "w8" / "sqlite", sizes)
    _write_gittree(disk_root / "w8" / "gittree", sizes, rng)
    _write_cproj(disk_root / "w8" / "cproj", sizes)
    stamp_file.write_text(want)


def _write_big(path: Path, mib: int, rng: random.Random) -> None:
    # A 1 MiB random block, each copy tagged with its index: incompressible
    # enough, and fast to generate.
    block = rng.randbytes(1 << 20)
    with path.open("wb") as f:
        for i in range(mib):
            f.write(i.to_bytes(8, "little") + block[8:])


def _write_tree(top: Path, sizes: Sizes, rng: random.Random) -> None:
    per_dir = -(-sizes.tree_files // sizes.tree_dirs)
    n = 0
    for d in range(sizes.tree_dirs):
        sub = top / f"d{d:03d}"
        sub.mkdir(parents=True)
        for _ in range(per_dir):
            if n == sizes.tree_files:
                return
            (sub / f"f{n:05d}.bin").write_bytes(rng.randbytes(sizes.tree_file_bytes))
            n += 1


def _write_sqlite(top: Path, sizes: Sizes) -> None:
    top.mkdir(parents=True)
    (top / "script.sql").write_text(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);\n"
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        f"WHERE x < {sizes.sqlite_rows})\n"
        "INSERT INTO t SELECT x, (x * 7919) % 1000, printf('row-%08d', x) FROM c;\n"
        "CREATE INDEX tk ON t(k);\n"
        "SELECT count(*), sum(k), max(v) FROM t WHERE k < 500;\n"
        "SELECT k, count(*) FROM t GROUP BY k ORDER BY k LIMIT 3;\n"
        "UPDATE t SET v = upper(v) WHERE k = 7;\n"
        "SELECT count(*) FROM t WHERE v GLOB 'ROW-*';\n"
    )


def _write_gittree(top: Path, sizes: Sizes, rng: random.Random) -> None:
    words = [hashlib.sha256(str(i).encode()).hexdigest()[:8] for i in range(512)]
    dirs = max(1, sizes.git_files // 100)
    for i in range(sizes.git_files):
        sub = top / f"pkg{i % dirs:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choices(words, k=10)) for _ in range(rng.randint(5, 40))]
        (sub / f"mod{i:04d}.txt").write_text("\n".join(lines) + "\n")


def _write_cproj(top: Path, sizes: Sizes) -> None:
    top.mkdir(parents=True)
    decls = []
    calls = []
    for m in range(sizes.c_modules):
        funcs = []
        for f in range(8):
            name = f"m{m}_f{f}"
            decls.append(f"unsigned long {name}(unsigned long x);")
            calls.append(f"    acc = {name}(acc);")
            k = m * 8 + f
            funcs.append(
                f"unsigned long {name}(unsigned long x) {{\n"
                f"    for (int i = 0; i < {100 + k}; i++)\n"
                f"        x = x * {6364136223846793005 % (1000 + k)}UL + {k + 1}UL;\n"
                "    return x ^ (x >> 17);\n}\n"
            )
        (top / f"m{m}.c").write_text('#include "proj.h"\n\n' + "\n".join(funcs))
    (top / "proj.h").write_text("#pragma once\n" + "\n".join(decls) + "\n")
    (top / "main.c").write_text(
        '#include <stdio.h>\n#include "proj.h"\n\nint main(void) {\n'
        "    unsigned long acc = 1;\n" + "\n".join(calls) + '\n    printf("%lu\\n", acc);\n'
        "    return 0;\n}\n"
    )
    objs = " ".join(f"m{m}.o" for m in range(sizes.c_modules)) + " main.o"
    (top / "Makefile").write_text(
        "CC = gcc\nCFLAGS = -O2 -Wall\n\n"
        f"prog: {objs}\n\t$(CC) -o $@ $^\n\n"
        "%.o: %.c proj.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n"
    )
