"""Namespace and trusted-part attacks, one per MODE, as a guest would try them.

Usage: paths.py MODE DATA TARGET [MARKER]

DATA is where the synthetic tree is (``/data`` under synthfs, a plain
directory for the native control). TARGET is a host path the guest must not
reach (a canary in the agent's cache, the bootstrap key, the agent's socket,
a pid...). MARKER, when given, is the content that proves the file read is
the forbidden one.

TARGET ``@FILE`` (a pid to come): the attack creates ``FILE.waiting``, waits
up to 30 s for FILE, and attacks the pid FILE names (a restarted agent).

Exit status (nsjail style): 66 = the forbidden thing happened; 0 = refused
as expected; 3 = refused, but not the way the case requires (e.g. wrong
errno); 2 = usage or setup error. One line on stdout says what happened.
"""

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import socket
import sys
import tempfile
import time

ESCAPED, REFUSED, ODD, USAGE = 66, 0, 3, 2
DEEP = "../" * 40  # more than enough `..` to reach / from anywhere


def out(code, msg):
    print(msg, flush=True)
    sys.exit(code)


def fail_name(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def read_and_judge(path_or_fd, marker, how, *, dir_fd=None):
    """Open (if a path) and read: escaped when any byte (or the marker) comes back."""
    try:
        if isinstance(path_or_fd, int):
            fd = path_or_fd
        else:
            fd = os.open(path_or_fd, os.O_RDONLY, dir_fd=dir_fd)
        data = os.read(fd, 4096)
        os.close(fd)
    except OSError as e:
        out(REFUSED, f"{how}: refused ({fail_name(e)})")
    if marker is None or marker.encode() in data:
        out(ESCAPED, f"{how}: ESCAPED, read {data[:40]!r}")
    out(ODD, f"{how}: read something else: {data[:40]!r}")


def pid_to_come(target):
    """``@FILE``: say we wait (FILE.waiting), then the pid FILE names once it exists."""
    path = target[1:]
    open(path + ".waiting", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            out(USAGE, f"{path} never came")
        time.sleep(0.02)
    with open(path) as f:
        return f.read().strip()


def rel(target):
    return target.lstrip("/")


def main():
    if len(sys.argv) < 4:
        out(USAGE, __doc__)
    mode, data, target = sys.argv[1:4]
    marker = sys.argv[4] if len(sys.argv) > 4 else None
    libc = ctypes.CDLL(None, use_errno=True)
    if target.startswith("@"):
        target = pid_to_come(target)

    if mode == "abs":
        read_and_judge(target, marker, "absolute path")
    elif mode == "dotdot":
        read_and_judge(f"{data}/{DEEP}{rel(target)}", marker, ".. chain from the mount")
    elif mode == "dotdot_relative":
        os.chdir(data)
        read_and_judge(f"{DEEP}{rel(target)}", marker, "relative .. chain from cwd in the mount")
    elif mode == "dotdot_subdir":
        os.chdir(f"{data}/sub")
        read_and_judge(f"../../{DEEP}{rel(target)}", marker, ".. chain from a subdir of the mount")
    elif mode == "dirfd_dotdot":
        dfd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
        read_and_judge(f"{DEEP}{rel(target)}", marker, "openat(dirfd of mount, ../..)", dir_fd=dfd)
    elif mode == "chdir_dotdot":
        os.chdir(data)
        try:
            os.chdir(f"{DEEP}{rel(os.path.dirname(target))}")
        except OSError as e:
            out(REFUSED, f"chdir via .. into the target's dir: refused ({fail_name(e)})")
        read_and_judge(os.path.basename(target), marker, "relative open after chdir via ..")
    elif mode == "tmp_symlink":
        d = tempfile.mkdtemp()
        os.symlink(target, f"{d}/l")
        read_and_judge(f"{d}/l", marker, "symlink in /tmp to the target")
    elif mode == "tmp_dir_symlink":
        d = tempfile.mkdtemp()
        os.symlink(os.path.dirname(target), f"{d}/dir")
        read_and_judge(f"{d}/dir/{os.path.basename(target)}", marker, "symlink in /tmp to the dir")
    elif mode == "tmp_symlink_via_data":
        d = tempfile.mkdtemp()
        os.symlink(f"{data}/{DEEP}{rel(target)}", f"{d}/l")
        read_and_judge(f"{d}/l", marker, "symlink in /tmp through the mount's ..")
    elif mode == "guest_symlink_abs":
        name = f"{data}/evil-abs-{os.getpid()}"
        os.symlink(target, name)
        read_and_judge(name, marker, "symlink created in the mount with an absolute host target")
    elif mode == "guest_symlink_rel":
        name = f"{data}/evil-rel-{os.getpid()}"
        os.symlink(f"{DEEP}{rel(target)}", name)
        read_and_judge(name, marker, "symlink created in the mount with a .. target")
    elif mode == "repo_link":
        # TARGET here is the name of a symlink stored in the repository.
        read_and_judge(f"{data}/{target}", marker, f"repository symlink {target}")
    elif mode == "repo_link_host_file":
        # A repository symlink to a host file under [[mount]] symlinks = "anchored"
        # (resolves inside the namespace: ENOENT) or "refuse-host" (EACCES): MARKER
        # is the errno name the case wants.
        link, host = target.split(":", 1)
        with open(host, "rb") as f:
            host_data = f.read(4096)
        try:
            fd = os.open(f"{data}/{link}", os.O_RDONLY)
        except OSError as e:
            code = REFUSED if fail_name(e) == marker else ODD
            out(code, f"repository symlink to host {host}: {fail_name(e)} (want {marker})")
        got = os.read(fd, 4096)
        if got == host_data:
            out(ESCAPED, f"repository symlink exposes host {host}: ESCAPED {got[:40]!r}")
        out(ODD, f"repository symlink opened something else: {got[:40]!r}")
    elif mode == "proc_cwd":
        try:
            os.chdir(os.path.dirname(target))
        except OSError:
            os.chdir(data)
            read_and_judge(
                f"/proc/self/cwd/{DEEP}{rel(target)}", marker, "/proc/self/cwd/.. from the mount"
            )
        read_and_judge(
            f"/proc/self/cwd/{os.path.basename(target)}", marker, "/proc/self/cwd after chdir"
        )
    elif mode == "proc_root":
        read_and_judge(f"/proc/self/root{target}", marker, "/proc/self/root + target")
    elif mode == "proc_fd_dir":
        dfd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
        read_and_judge(f"/proc/self/fd/{dfd}/{DEEP}{rel(target)}", marker, "/proc/self/fd/N/..")
    elif mode == "proc_thread_cwd":
        os.chdir(data)
        read_and_judge(
            f"/proc/thread-self/cwd/{DEEP}{rel(target)}", marker, "/proc/thread-self/cwd/.."
        )
    elif mode == "stat":
        try:
            st = os.stat(target)
        except OSError as e:
            out(REFUSED, f"stat: refused ({fail_name(e)})")
        out(ESCAPED, f"stat: ESCAPED (the target exists, size {st.st_size})")
    elif mode == "listdir":
        try:
            names = os.listdir(os.path.dirname(target))
        except OSError as e:
            out(REFUSED, f"listdir of the target's dir: refused ({fail_name(e)})")
        out(ESCAPED, f"listdir of the target's dir: ESCAPED {sorted(names)[:5]}")
    elif mode == "rename_into_data":
        try:
            os.rename(target, f"{data}/stolen-{os.getpid()}")
        except OSError as e:
            out(REFUSED, f"rename target into the mount: refused ({fail_name(e)})")
        out(ESCAPED, "rename target into the mount: ESCAPED")
    elif mode == "hardlink":
        d = tempfile.mkdtemp()
        try:
            os.link(target, f"{d}/hl")
        except OSError as e:
            out(REFUSED, f"hard link to the target: refused ({fail_name(e)})")
        read_and_judge(f"{d}/hl", marker, "hard link to the target")
    elif mode == "hardlink_in_data":
        # a second name inside the mount, where the policy would let it be read
        new = f"{data}/hl-{os.getpid()}"
        try:
            os.link(target, new)
        except OSError as e:
            out(REFUSED, f"hard link to the target inside the mount: refused ({fail_name(e)})")
        read_and_judge(new, marker, "hard link to the target inside the mount")
    elif mode == "unlink":
        try:
            os.unlink(target)
        except OSError as e:
            out(REFUSED, f"unlink target: refused ({fail_name(e)})")
        out(ESCAPED, "unlink target: ESCAPED (it is gone)")
    elif mode == "write":
        try:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"x")
        except OSError as e:
            out(REFUSED, f"open target for writing: refused ({fail_name(e)})")
        out(ESCAPED, "open target for writing: ESCAPED")
    elif mode == "connect":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(target)
        except OSError as e:
            out(REFUSED, f"connect to the socket: refused ({fail_name(e)})")
        out(ESCAPED, "connect to the socket: ESCAPED")
    elif mode == "openat2_dotdot":
        # openat2(AT_FDCWD, data/../../target, {O_RDONLY, resolve=RESOLVE_NO_MAGICLINKS})
        how = (ctypes.c_uint64 * 3)(os.O_RDONLY, 0, 0x02)
        path = f"{data}/{DEEP}{rel(target)}".encode()
        fd = libc.syscall(437, -100, path, ctypes.byref(how), 24)
        if fd < 0:
            out(REFUSED, f"openat2 .. chain: refused ({errno.errorcode.get(ctypes.get_errno())})")
        read_and_judge(fd, marker, "openat2 .. chain")
    elif mode == "openat2_dirfd":
        # openat2(dirfd of the mount, ../../target, {O_RDONLY, resolve=0})
        dfd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
        how = (ctypes.c_uint64 * 3)(os.O_RDONLY, 0, 0)
        path = f"{DEEP}{rel(target)}".encode()
        fd = libc.syscall(437, dfd, path, ctypes.byref(how), 24)
        if fd < 0:
            out(REFUSED, f"openat2 dirfd ..: refused ({errno.errorcode.get(ctypes.get_errno())})")
        read_and_judge(fd, marker, "openat2 dirfd .. chain")
    elif mode == "proc_fd_reopen_write":
        # Reopen a read-only fd on a /data file for writing through /proc/self/fd.
        fd = os.open(f"{data}/{target}", os.O_RDONLY)
        try:
            w = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND)
            os.write(w, b"tampered\n")
            os.close(w)
        except OSError as e:
            out(REFUSED, f"reopen read-only fd for writing: refused ({fail_name(e)})")
        out(ESCAPED, "reopen read-only fd for writing via /proc/self/fd: ESCAPED")
    elif mode == "maps_leak":
        # mmap a /data file; whatever path /proc/self/maps shows for the mapping must
        # be /data/... or refuse to open (the cache's host path is nameless to guests).
        with open(f"{data}/{target}", "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        probe = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(probe)
        del probe
        shown = None
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi and len(parts) == 6:
                    shown = parts[5].strip()
        m.close()
        if shown is None:
            out(ODD, "the mapping is not in /proc/self/maps")
        if shown.startswith("/data/"):
            out(REFUSED, f"maps shows the synthetic path {shown}")
        try:
            fd = os.open(shown.removesuffix(" (deleted)"), os.O_RDONLY)
        except OSError as e:
            out(REFUSED, f"maps shows host path {shown}, which does not open ({fail_name(e)})")
        os.close(fd)
        out(ESCAPED, f"maps shows host path {shown} and it opens: ESCAPED")
    elif mode == "long_dotdot":
        # close to PATH_MAX: a supervisor that truncates the copy must not resolve it differently
        pad = "./" * ((4000 - len(data) - len(DEEP) - len(target)) // 2)
        read_and_judge(f"{data}/{pad}{DEEP}{rel(target)}", marker, "near-PATH_MAX .. chain")
    elif mode == "too_long":
        # beyond PATH_MAX: ENAMETOOLONG natively and under synthfs, never a truncated path
        path = f"{data}/{'./' * 2100}{DEEP}{rel(target)}"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            code = REFUSED if e.errno == errno.ENAMETOOLONG else ODD
            out(code, f"path of {len(path)} bytes: {fail_name(e)} (want ENAMETOOLONG)")
        read_and_judge(fd, marker, "path beyond PATH_MAX")
    elif mode == "nonutf8_dotdot":
        # a directory whose name is not UTF-8, then .. out of the mount
        path = os.fsencode(data) + b"/\xff\xfe/../" + os.fsencode(DEEP + rel(target))
        read_and_judge(path, marker, ".. chain through a non-UTF-8 directory")
    elif mode == "signal":
        if target == "ppid":
            target = str(os.getppid())
        try:
            os.kill(int(target), 0)
        except OSError as e:
            out(REFUSED, f"kill(pid, 0): refused ({fail_name(e)})")
        out(ESCAPED, "kill(pid, 0) succeeded: ESCAPED (the guest may signal it)")
    elif mode == "signal_group":
        # SIGCONT (harmless) to the whole process group of a trusted process
        try:
            os.killpg(os.getpgid(int(target)), signal.SIGCONT)
        except OSError as e:
            out(REFUSED, f"killpg(its group, SIGCONT): refused ({fail_name(e)})")
        out(ESCAPED, "killpg(its group, SIGCONT) succeeded: ESCAPED")
    elif mode == "prlimit":
        # set its RLIMIT_CPU to what it is (a lower one would kill it with SIGXCPU)
        import resource

        if target == "ppid":
            target = str(os.getppid())
        pid = int(target)
        try:
            resource.prlimit(pid, resource.RLIMIT_CPU, resource.prlimit(pid, resource.RLIMIT_CPU))
        except OSError as e:
            out(REFUSED, f"prlimit(pid, RLIMIT_CPU): refused ({fail_name(e)})")
        out(ESCAPED, "prlimit(pid, RLIMIT_CPU) set: ESCAPED (the guest may change its limits)")
    elif mode == "sched_setaffinity":
        if target == "ppid":
            target = str(os.getppid())
        pid = int(target)
        try:
            os.sched_setaffinity(pid, os.sched_getaffinity(pid))
        except OSError as e:
            out(REFUSED, f"sched_setaffinity(pid): refused ({fail_name(e)})")
        out(ESCAPED, "sched_setaffinity(pid) succeeded: ESCAPED")
    elif mode in ("setown", "setown_group", "setown_ex", "fiosetown"):
        # issue #16 class 2: make the target a file's owner, with F_SETSIG(SIGSTOP) and
        # O_ASYNC: the next write to the pipe (data on the socket) stops it; SIGCONT
        # follows the same way. Natively the target is seen stopped (/proc/PID/stat).
        import fcntl
        import struct

        F_SETOWN, F_SETSIG, F_SETOWN_EX, FIOSETOWN = 8, 10, 15, 0x8901
        if target == "ppid":
            target = str(os.getppid())
        pid = int(target)
        if mode == "fiosetown":
            r, w = socket.socketpair()
            rfd, poke = r.fileno(), (lambda: w.send(b"x"))
        else:
            rfd, wfd = os.pipe()
            poke = lambda: os.write(wfd, b"x")  # noqa: E731
        try:
            if mode == "setown":
                fcntl.fcntl(rfd, F_SETOWN, pid)
            elif mode == "setown_group":
                fcntl.fcntl(rfd, F_SETOWN, -os.getpgid(pid))
            elif mode == "setown_ex":
                fcntl.fcntl(rfd, F_SETOWN_EX, struct.pack("ii", 1, pid))  # F_OWNER_PID
            else:
                fcntl.ioctl(rfd, FIOSETOWN, struct.pack("i", pid))
        except OSError as e:
            out(REFUSED, f"{mode}: refused ({fail_name(e)})")
        fcntl.fcntl(rfd, F_SETSIG, signal.SIGSTOP)
        fcntl.fcntl(rfd, fcntl.F_SETFL, fcntl.fcntl(rfd, fcntl.F_GETFL) | os.O_ASYNC)
        poke()
        time.sleep(0.2)
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "?"  # /proc/PID of a trusted process is refused: the owner was set
        fcntl.fcntl(rfd, F_SETSIG, signal.SIGCONT)
        poke()
        if state in ("T", "?"):
            out(ESCAPED, f"{mode}: ESCAPED, SIGSTOP reached pid {pid} (state {state})")
        out(ODD, f"{mode}: owner set but the target was not stopped (state {state})")
    elif mode == "setpriority":
        # its current nice value again (a higher one would starve it)
        pid = int(target)
        try:
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid))
        except OSError as e:
            out(REFUSED, f"setpriority(PRIO_PROCESS, pid): refused ({fail_name(e)})")
        out(ESCAPED, "setpriority(PRIO_PROCESS, pid) succeeded: ESCAPED")
    elif mode == "pidfd_signal":
        pid = int(target)
        try:
            fd = os.pidfd_open(pid)
            signal.pidfd_send_signal(fd, 0)
        except OSError as e:
            out(REFUSED, f"pidfd_send_signal: refused ({fail_name(e)})")
        out(ESCAPED, "pidfd_send_signal(pidfd, 0) succeeded: ESCAPED")
    elif mode == "mknod_dev":
        # issue #16 class 3: a node of our own for a device the policy does not let us
        # write (TARGET = MAJOR:MINOR), made in a directory we may write, then written
        import stat

        major, minor = (int(x) for x in target.split(":"))
        node = os.path.join(os.getcwd(), "dev-node")
        with contextlib.suppress(OSError):
            os.unlink(node)
        try:
            os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(major, minor))
            fd = os.open(node, os.O_WRONLY | os.O_NOCTTY)
            os.write(fd, (marker or "x").encode() + b"\n")
            os.close(fd)
        except OSError as e:
            out(REFUSED, f"mknod + write of device {target}: refused ({fail_name(e)})")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(node)
        out(ESCAPED, f"mknod + write of device {target}: ESCAPED")
    elif mode == "proc_environ":
        read_and_judge(f"/proc/{int(target)}/environ", None, "/proc/PID/environ")
    elif mode == "proc_fd_list":
        try:
            fds = os.listdir(f"/proc/{int(target)}/fd")
        except OSError as e:
            out(REFUSED, f"/proc/PID/fd listing: refused ({fail_name(e)})")
        out(ESCAPED, f"/proc/PID/fd listing: ESCAPED {len(fds)} fds")
    elif mode == "ptrace_attach":
        pid = int(target)
        if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
            out(REFUSED, f"ptrace attach: refused ({errno.errorcode.get(ctypes.get_errno())})")
        os.waitpid(pid, 0x40000000)
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
        out(ESCAPED, "ptrace attach: ESCAPED")
    elif mode == "proc_mem_read":
        pid = int(target)
        try:
            with open(f"/proc/{pid}/maps") as f:
                start = int(f.readline().split("-")[0], 16)
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
            got = os.pread(fd, 16, start)
        except OSError as e:
            out(REFUSED, f"/proc/PID/mem read: refused ({fail_name(e)})")
        out(ESCAPED, f"/proc/PID/mem read: ESCAPED {got!r}")
    elif mode == "process_vm_readv":
        pid = int(target)
        try:
            with open(f"/proc/{pid}/maps") as f:
                start = int(f.readline().split("-")[0], 16)
        except OSError as e:
            out(REFUSED, f"/proc/PID/maps: refused ({fail_name(e)})")

        class Iov(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        buf = ctypes.create_string_buffer(16)
        local, remote = Iov(ctypes.addressof(buf), 16), Iov(start, 16)
        n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n < 0:
            out(REFUSED, f"process_vm_readv: refused ({errno.errorcode.get(ctypes.get_errno())})")
        out(ESCAPED, f"process_vm_readv: ESCAPED {buf.raw!r}")
    elif mode == "rename_into":
        # plant a file in the target's directory (a staged upload, a cache entry...)
        d = tempfile.mkdtemp()
        with open(f"{d}/planted", "w") as f:
            f.write("planted\n")
        try:
            os.rename(f"{d}/planted", f"{os.path.dirname(target)}/planted-{os.getpid()}")
        except OSError as e:
            out(REFUSED, f"rename a file into the target's dir: refused ({fail_name(e)})")
        os.unlink(f"{os.path.dirname(target)}/planted-{os.getpid()}")
        out(ESCAPED, "rename a file into the target's dir: ESCAPED")
    elif mode == "rename_over":
        # replace the target (a key file, a socket a trusted process connects to)
        d = tempfile.mkdtemp()
        with open(f"{d}/planted", "w") as f:
            f.write("planted\n")
        try:
            os.rename(f"{d}/planted", target)
        except OSError as e:
            out(REFUSED, f"rename a file over the target: refused ({fail_name(e)})")
        out(ESCAPED, "rename a file over the target: ESCAPED (replaced)")
    elif mode == "exec":
        # TARGET is an executable that exits 66 (a script of the repository)
        try:
            os.execv(target, [target])
        except OSError as e:
            out(REFUSED, f"exec the target: refused ({fail_name(e)})")
    elif mode == "rename_ancestor":
        # move the directory above the target's directory: the target gets a new name
        box = os.path.dirname(os.path.dirname(target))
        moved = f"{box}-moved-{os.getpid()}"
        try:
            os.rename(box, moved)
        except OSError as e:
            out(REFUSED, f"rename the target's grandparent: refused ({fail_name(e)})")
        data, why = b"", ""
        try:
            fd = os.open(moved + target[len(box):], os.O_RDONLY)
            data = os.read(fd, 4096)
            os.close(fd)
        except OSError as e:
            why = fail_name(e)
        finally:
            os.rename(moved, box)
        if data and (marker is None or marker.encode() in data):
            out(ESCAPED, f"read through the renamed grandparent: ESCAPED {data[:40]!r}")
        out(REFUSED, f"grandparent renamed, the target still refused ({why})")
    elif mode in ("swap_read", "swap_chmod"):
        # a second thread exchanges W/d between a real directory and a symlink to the
        # target's directory while this one reads (chmods) W/d/NAME: a check on one
        # and a kernel walk on the other would reach the target
        swap(libc, mode, target, marker)
    else:
        out(USAGE, f"unknown mode {mode}")


def swap(libc, mode, target, marker, attempts=10000):
    import threading

    name = os.path.basename(target)
    w = tempfile.mkdtemp()
    os.mkdir(f"{w}/d")
    with open(f"{w}/d/{name}", "w") as f:
        f.write("decoy\n")
    os.symlink(os.path.dirname(target), f"{w}/alt")
    before = None
    with contextlib.suppress(OSError):  # refused: only the test's own look can judge
        before = os.stat(target).st_ctime_ns
    stop = []

    def flip():
        a, b = f"{w}/d".encode(), f"{w}/alt".encode()
        while not stop:  # renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
            libc.syscall(316, -100, a, -100, b, 2)

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    seen = {"decoy": 0, "refused": 0}
    try:
        for i in range(attempts):
            path = f"{w}/d/{name}"
            try:
                if mode == "swap_read":
                    with open(path, "rb") as f:
                        data = f.read(4096)
                    if marker is not None and marker.encode() in data:
                        out(ESCAPED, f"swap_read: ESCAPED on attempt {i}: {data[:40]!r}")
                    seen["decoy"] += 1
                else:
                    os.chmod(path, 0o640 if i % 2 else 0o644)
                    seen["decoy"] += 1
                    if before is not None and i % 256 == 255:
                        with contextlib.suppress(OSError):
                            if os.stat(target).st_ctime_ns != before:
                                break  # natively: reached (judged below)
            except OSError:
                seen["refused"] += 1
    finally:
        stop.append(1)
        t.join()
    if mode == "swap_chmod" and before is not None:
        with contextlib.suppress(OSError):
            if os.stat(target).st_ctime_ns != before:
                out(ESCAPED, f"swap_chmod: ESCAPED (the target's mode changed) {seen}")
    out(REFUSED, f"{mode}: no escape in {attempts} attempts {seen}")


if __name__ == "__main__":
    main()
