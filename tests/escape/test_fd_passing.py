"""Escape suite: a /data fd a process never opened, received over a socket (SCM_RIGHTS)
or shared through one fd table (clone with CLONE_FILES).

The fd rows (fchmod, fchown, fsetxattr, fsync, close...) are stopped only in a
process that may hold a /data fd: one that opened something on /data, or
inherited the mark at fork. A process that receives such an fd over a Unix
socket never opened it. Before, in it those calls ran natively on the agent's
cache object: under ``readonly`` an fchmod there made the agent take its copy
for a written one and upload it (a rollback of another agent's newer write),
and an fsync returned 0 before the server had the data (review round 12,
finding 4). A receiver is now marked as soon as it calls recvmsg in a run that
has a /data fd anywhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.ptrace

READONLY = helpers.REPO / "policies" / "readonly.toml"

#: A opens /data/c.txt read-only and passes the fd to its child B, which never opened
#: anything on /data; B tries to change the file's metadata through it.
METADATA_THROUGH_A_PASSED_FD = """
import array, os, socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
pb = os.fork()
if pb == 0:
    a.close()
    _, anc, _, _ = b.recvmsg(16, socket.CMSG_SPACE(4))
    fd = array.array("i", anc[0][2])[0]
    for what, f in (("fchmod", lambda: os.chmod(fd, 0o777)),
                    ("fchown", lambda: os.chown(fd, os.getuid(), os.getgid())),
                    ("fsetxattr", lambda: os.setxattr(fd, "user.pwn", b"1"))):
        try:
            f()
            print("B", what, "ok", flush=True)
        except OSError as e:
            print("B", what, e.errno, flush=True)
    os._exit(0)
b.close()
fd = os.open("/data/c.txt", os.O_RDONLY)
try:
    os.chmod(fd, 0o777)
    print("A fchmod ok", flush=True)
except OSError as e:
    print("A fchmod", e.errno, flush=True)
a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
os.waitpid(pb, 0)
"""

#: A creates /data/out.txt, passes the writable fd to B and closes its own and exits; B
#: appends, fsyncs, says so, and waits for a line on stdin (the test looks at the served
#: directory meanwhile: the run has not ended).
FSYNC_THROUGH_A_PASSED_FD = """
import array, os, socket, sys
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
pb = os.fork()
if pb == 0:
    a.close()
    _, anc, _, _ = b.recvmsg(16, socket.CMSG_SPACE(4))
    fd = array.array("i", anc[0][2])[0]
    b.recv(1)
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, b"written-by-B\\n")
    os.fsync(fd)
    print("fsynced", flush=True)
    sys.stdin.readline()
    os._exit(0)
b.close()
pa = os.fork()
if pa == 0:
    fd = os.open("/data/out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"written-by-A\\n")
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    os.close(fd)
    os._exit(0)
os.waitpid(pa, 0)
a.send(b"g")
os.waitpid(pb, 0)
"""


def test_a_passed_fd_is_judged_as_the_opener_is(synthfs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "c.txt").write_text("original\n")
    (repo / "c.txt").chmod(0o644)
    out = synthfs.run(repo, [sys.executable, "-c", METADATA_THROUGH_A_PASSED_FD], cwd=tmp_path,
                      extra=("--policy", str(READONLY)))
    assert out.status == 0, out.show()
    # EROFS as the opener gets; xattrs on /data are ENOTSUP whatever the policy
    assert out.stdout.splitlines() == ["A fchmod 30", "B fchmod 30", "B fchown 30",
                                       "B fsetxattr 95"], out.show()
    assert (repo / "c.txt").stat().st_mode & 0o777 == 0o644
    assert (repo / "c.txt").read_text() == "original\n"


def test_fsync_of_a_passed_fd_returns_once_the_server_has_it(synthfs, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    with synthfs.stack(repo) as stack:
        p = subprocess.Popen(synthfs.argv(repo, [sys.executable, "-c", FSYNC_THROUGH_A_PASSED_FD],
                                          stack=stack),
                             cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdin is not None
            said = p.stdout.readline()
            served = (repo / "out.txt").read_text() if said == "fsynced\n" else None
            p.stdin.write("go\n")
            p.stdin.close()
            err = p.stderr.read() if p.stderr else ""
            assert p.wait(timeout=60) == 0, err
        finally:
            p.kill()
            p.wait()
    assert said == "fsynced\n", err
    # what the served directory held right after B's fsync returned
    assert served == "written-by-A\nwritten-by-B\n"


def test_a_process_sharing_the_fd_table_is_looked_at(synthfs, tmp_path: Path) -> None:
    """clone(CLONE_FILES) without CLONE_THREAD: the parent opens /data after the clone;
    the child, which shares its fd table, fchmods the fd under ``readonly``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "c.txt").write_text("original\n")
    (repo / "c.txt").chmod(0o644)
    src = tmp_path / "shared_table.c"
    src.write_text(r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
static volatile int fd = -1;
static int child(void *arg) {
    (void)arg;
    while (fd < 0) usleep(1000);
    printf("child fchmod %d\n", fchmod(fd, 0777) == 0 ? 0 : errno);
    fflush(stdout);
    return 0;
}
int main(void) {
    char *stack = malloc(1 << 16);
    int pid = clone(child, stack + (1 << 16), CLONE_FILES | CLONE_VM | SIGCHLD, NULL);
    if (pid < 0) { perror("clone"); return 1; }
    usleep(100000);
    fd = open("/data/c.txt", O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    waitpid(pid, NULL, 0);
    return 0;
}
""")
    exe = tmp_path / "shared_table"
    subprocess.run(["cc", "-O1", "-o", str(exe), str(src)], check=True)
    out = synthfs.run(repo, [str(exe)], cwd=tmp_path, extra=("--policy", str(READONLY)))
    assert out.status == 0, out.show()
    assert out.stdout == "child fchmod 30\n", out.show()
    assert (repo / "c.txt").stat().st_mode & 0o777 == 0o644
