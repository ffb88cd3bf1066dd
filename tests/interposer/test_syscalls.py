"""The syscall table is the single source of truth: everything built from it must agree."""

from __future__ import annotations

import pyseccomp as sc

from synthfs.cli import main as cli_main
from synthfs.interposer.filter import build_filter
from synthfs.interposer.syscalls import BY_NAME, MAX_KNOWN_NR, TABLE, Action, Level, Role

#: Every x86_64 syscall that takes a path (or reaches another process's files),
#: from the kernel's syscall list. Each must have a row: a path syscall the
#: table does not know would run unchecked.
PATH_SYSCALLS = [
    "open",
    "openat",
    "openat2",
    "creat",
    "stat",
    "lstat",
    "newfstatat",
    "statx",
    "access",
    "faccessat",
    "faccessat2",
    "readlink",
    "readlinkat",
    "statfs",
    "chmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "lchown",
    "fchownat",
    "truncate",
    "utime",
    "utimes",
    "futimesat",
    "utimensat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "mknod",
    "mknodat",
    "getxattr",
    "lgetxattr",
    "setxattr",
    "lsetxattr",
    "listxattr",
    "llistxattr",
    "removexattr",
    "lremovexattr",
    "setxattrat",
    "getxattrat",
    "listxattrat",
    "removexattrat",
    "file_getattr",
    "file_setattr",
    "chdir",
    "execve",
    "execveat",
    "inotify_add_watch",
    "name_to_handle_at",
    "open_by_handle_at",
    "chroot",
    "pivot_root",
    "mount",
    "umount2",
    "open_tree",
    "open_tree_attr",
    "move_mount",
    "fspick",
    "fsconfig",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "uselib",
    "fanotify_mark",
    "connect",
    "bind",
]


def test_every_path_syscall_has_a_row() -> None:
    missing = [name for name in PATH_SYSCALLS if name not in BY_NAME]
    assert not missing


def test_rows_match_the_kernel_numbers_and_handlers_exist() -> None:
    arch = sc.system_arch()
    for spec in TABLE:
        if spec.nr <= 454:  # libseccomp 2.5 knows names up to here
            assert sc.resolve_syscall(arch, spec.nr).decode() == spec.name, spec
        if spec.action is Action.TRACE:
            assert callable(spec.handler), f"{spec.name}: no handler"
        else:
            assert spec.errno or spec.action is Action.KILL, spec
        assert spec.nr <= MAX_KNOWN_NR


def test_path_rows_are_traced_or_refused() -> None:
    for spec in TABLE:
        if Role.PATH in spec.args and spec.action is Action.TRACE:
            assert not spec.when, f"{spec.name} takes a path: it must always be traced"
        if spec.level is Level.DENIED:
            assert spec.action is Action.ERRNO


def test_the_filter_builds_from_the_table() -> None:
    compiled = build_filter()
    assert compiled.instructions > len(TABLE)
    assert len(compiled.bpf) % 8 == 0


def test_synthfs_syscalls_prints_every_row(capsys) -> None:
    assert cli_main(["syscalls"]) == 0
    out = capsys.readouterr().out
    for spec in TABLE:
        assert f" {spec.name} " in out
    assert "ENOSYS" in out
