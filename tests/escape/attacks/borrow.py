"""Borrowed identity: code the attacker chose runs inside a program the policy trusts.

Usage: borrow.py MODE DATA PROG MARKER SO

The policy pins PROG (cat) by sha256 and lets it read DATA/secret, and lets
"helpers under /usr/lib" read it too; this python may not. A forked child
execs PROG so that the attacker's code (SO, a library whose constructor
prints $BORROW_TARGET) runs under PROG's name:

MODE: ld_preload (LD_PRELOAD=SO) | ld_audit (LD_AUDIT=SO)
      | ldso (the dynamic loader run directly: ld.so PROG DATA/secret; ld.so
        lives under /usr/lib) | ldso_preload (ld.so --preload SO PROG)
      | twin (PROG DATA/secret, nothing added: it MAY read, and must, or the
        refusals above prove nothing)

Exit 66 when the child printed MARKER; 0 when it did not (refused); 2 usage.
"""

import os
import sys

ESCAPED, REFUSED, USAGE = 66, 0, 2
LOADER = "/lib64/ld-linux-x86-64.so.2"


def main():
    if len(sys.argv) != 6:
        print(__doc__)
        return USAGE
    mode, data, prog, marker, so = sys.argv[1:]
    target = f"{data}/secret"
    env = {"PATH": "/usr/bin:/bin", "BORROW_TARGET": target}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.close(r)
        try:
            if mode == "ld_preload":
                os.execve(prog, [prog, "/dev/null"], {**env, "LD_PRELOAD": so})
            elif mode == "ld_audit":
                os.execve(prog, [prog, "/dev/null"], {**env, "LD_AUDIT": so})
            elif mode == "ldso":
                os.execve(LOADER, [LOADER, prog, target], env)
            elif mode == "ldso_preload":
                os.execve(LOADER, [LOADER, "--preload", so, prog, "/dev/null"], env)
            elif mode == "twin":
                os.execve(prog, [prog, target], env)
        finally:
            os._exit(3)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    _, status = os.waitpid(pid, 0)
    if marker.encode() in out:
        print(f"{mode}: ESCAPED, the attacker's code printed the secret")
        return ESCAPED
    print(f"{mode}: refused (child status {status:#x}, printed {out[:60]!r})")
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
