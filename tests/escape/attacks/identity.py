"""Identity attacks: a program the policy denies runs under another's name.

Usage: identity.py MODE DATA CAT MARKER

The policy lets this python read /data and denies CAT everything on /data.
A forked child execs CAT on DATA/secret through MODE; the parent reads the
child's stdout. Identity is the real executable, decided at every execve
(DESIGN.md § Policy), so CAT must be refused whatever the trick.

MODE: plain | argv0 (argv[0] = "python3") | execveat (fd + AT_EMPTY_PATH)
      | proc_fd (execve("/proc/self/fd/N")) | symlink (/tmp/python3 -> CAT)
      | allowed_twin (the child execs this python instead: it MAY read, and
        must, or the refusals above prove nothing)

Exit 66 when the child printed MARKER; 0 when it did not (refused); 2 usage.
"""

import ctypes
import os
import sys
import tempfile

ESCAPED, REFUSED, USAGE = 66, 0, 2


def main():
    if len(sys.argv) != 5:
        print(__doc__)
        return USAGE
    mode, data, cat, marker = sys.argv[1:]
    target = f"{data}/secret"
    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.close(r)
        try:
            if mode == "plain":
                os.execv(cat, [cat, target])
            elif mode == "argv0":
                os.execv(cat, ["python3", target])
            elif mode == "execveat":
                fd = os.open(cat, os.O_PATH)
                argv = (ctypes.c_char_p * 3)(b"cat", target.encode(), None)
                envp = (ctypes.c_char_p * 1)(None)
                libc.syscall(322, fd, b"", argv, envp, 0x1000)  # execveat, AT_EMPTY_PATH
                os._exit(3)
            elif mode == "proc_fd":
                fd = os.open(cat, os.O_RDONLY)
                os.execv(f"/proc/self/fd/{fd}", ["cat", target])
            elif mode == "symlink":
                d = tempfile.mkdtemp()
                os.symlink(cat, f"{d}/python3")
                os.execv(f"{d}/python3", ["python3", target])
            elif mode == "allowed_twin":
                code = "import sys; sys.stdout.write(open(sys.argv[1]).read())"
                os.execv(sys.executable, [sys.executable, "-I", "-c", code, target])
        finally:
            os._exit(3)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    _, status = os.waitpid(pid, 0)
    if marker.encode() in out:
        print(f"{mode}: ESCAPED, the denied program printed the secret")
        return ESCAPED
    print(f"{mode}: refused (child status {status:#x}, printed {out[:60]!r})")
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
