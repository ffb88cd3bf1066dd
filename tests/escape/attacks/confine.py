"""A guest that confines itself with openat2's RESOLVE_* flags must stay confined.

Usage: confine.py MODE DATA

The kernel refuses each of these opens; exit 66 when it succeeded (the flag
was dropped and the guest reached what it had fenced off), 0 when it was
refused with the kernel's errno, 3 when refused with another one, 2 usage.
Host modes build their own box (a directory in the cwd); data modes use the
tree's sub/up_secret -> ../secret and secret_link -> secret.

beneath_dotdot    openat2(box, "../outside", BENEATH)            EXDEV
beneath_abs       openat2(box, "/etc/passwd", BENEATH)           EXDEV
beneath_abs_link  openat2(box, "pw" -> /etc/passwd, BENEATH)     EXDEV
beneath_rel_link  openat2(box, "up" -> ../outside, BENEATH)      EXDEV
in_root_link      openat2(box, "pw" -> /etc/passwd, IN_ROOT)     ENOENT (box/etc/passwd)
no_symlinks       openat2(box, "pw", NO_SYMLINKS)                ELOOP
no_magiclinks     openat2(-, "/proc/self/fd/BOX/inner", NO_MAGICLINKS)  ELOOP
no_xdev           openat2(-, "/proc/self/status", NO_XDEV)       EXDEV
data_beneath      openat2(DATA/sub, "../secret", BENEATH)        EXDEV
data_beneath_link openat2(DATA/sub, "up_secret", BENEATH)        EXDEV
data_in_root      openat2(DATA/sub, "up_secret", IN_ROOT)        ENOENT (sub/secret)
data_no_symlinks  openat2(DATA, "secret_link", NO_SYMLINKS)      ELOOP
"""

import ctypes
import errno
import os
import struct
import sys
import tempfile

ESCAPED, REFUSED, WRONG, USAGE = 66, 0, 3, 2
BENEATH, IN_ROOT, NO_SYM, NO_MAGIC, NO_XDEV = 0x08, 0x10, 0x04, 0x02, 0x01
AT_FDCWD = -100
libc = ctypes.CDLL(None, use_errno=True)


def openat2(dirfd, path, resolve):
    how = struct.pack("QQQ", os.O_RDONLY, 0, resolve)
    fd = libc.syscall(437, dirfd, path.encode(), how, len(how))
    return fd, (ctypes.get_errno() if fd < 0 else 0)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return USAGE
    mode, data = sys.argv[1:]
    top = tempfile.mkdtemp(dir=".")
    os.mkdir(f"{top}/box")
    with open(f"{top}/outside", "w") as f:
        f.write("outside\n")
    with open(f"{top}/box/inner", "w") as f:
        f.write("inner\n")
    os.symlink("/etc/passwd", f"{top}/box/pw")
    os.symlink("../outside", f"{top}/box/up")
    box = os.open(f"{top}/box", os.O_PATH | os.O_DIRECTORY)
    cases = {
        "beneath_dotdot": (lambda: openat2(box, "../outside", BENEATH), errno.EXDEV),
        "beneath_abs": (lambda: openat2(box, "/etc/passwd", BENEATH), errno.EXDEV),
        "beneath_abs_link": (lambda: openat2(box, "pw", BENEATH), errno.EXDEV),
        "beneath_rel_link": (lambda: openat2(box, "up", BENEATH), errno.EXDEV),
        "in_root_link": (lambda: openat2(box, "pw", IN_ROOT), errno.ENOENT),
        "no_symlinks": (lambda: openat2(box, "pw", NO_SYM), errno.ELOOP),
        "no_magiclinks": (
            lambda: openat2(AT_FDCWD, f"/proc/self/fd/{box}/inner", NO_MAGIC), errno.ELOOP
        ),
        "no_xdev": (lambda: openat2(AT_FDCWD, "/proc/self/status", NO_XDEV), errno.EXDEV),
    }
    if mode.startswith("data_"):
        sub = os.open(f"{data}/sub", os.O_PATH | os.O_DIRECTORY)
        root = os.open(data, os.O_PATH | os.O_DIRECTORY)
        cases.update({
            "data_beneath": (lambda: openat2(sub, "../secret", BENEATH), errno.EXDEV),
            "data_beneath_link": (lambda: openat2(sub, "up_secret", BENEATH), errno.EXDEV),
            "data_in_root": (lambda: openat2(sub, "up_secret", IN_ROOT), errno.ENOENT),
            "data_no_symlinks": (lambda: openat2(root, "secret_link", NO_SYM), errno.ELOOP),
        })
    if mode not in cases:
        print(__doc__)
        return USAGE
    call, want = cases[mode]
    fd, err = call()
    if fd >= 0:
        print(f"{mode}: ESCAPED, opened {os.readlink(f'/proc/self/fd/{fd}')}")
        return ESCAPED
    name = errno.errorcode.get(err, str(err))
    if err != want:
        print(f"{mode}: refused with {name}, the kernel says {errno.errorcode[want]}")
        return WRONG
    print(f"{mode}: refused ({name})")
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
