"""exec_swap DIR NAME SECONDS: run DIR/NAME, a program the check refuses, by a race.

A thread flips ``d`` (in the cwd) between a real directory holding a copy of
``true`` named NAME and a symlink to DIR, while the main thread runs
``d/NAME``. DIR/NAME exits 1 (a copy of ``false``): a check of the path while
``d`` is the real directory, followed by a kernel walk of the same text while
``d`` is the symlink, runs it. Exit 66 when it ran; prints the counts (runs of
the copy of true, processes killed at the exec stop, errors by name).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
import time

where, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.mkdir("d.real")
shutil.copy(shutil.which("true") or "/bin/true", f"d.real/{name}")
os.chmod(f"d.real/{name}", 0o755)
stop = False


def flip() -> None:
    while not stop:
        try:
            os.rename("d.real", "d")  # d is a real directory
            os.rename("d", "d.real")
            os.symlink(where, "d")  # d leads to the refused directory
            os.unlink("d")
        except OSError:
            pass


thread = threading.Thread(target=flip, daemon=True)
thread.start()
counts: dict[str, int] = {"true": 0, "killed": 0}
ran = False
end = time.monotonic() + seconds
while time.monotonic() < end and not ran:
    try:
        pid = os.posix_spawn(f"d/{name}", [name], {})
    except OSError as exc:
        key = errno.errorcode.get(exc.errno or 0, "?")
        counts[key] = counts.get(key, 0) + 1
        continue
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        counts["killed"] += 1
    elif os.WEXITSTATUS(status) == 1:
        ran = True
    else:
        counts["true"] += 1
stop = True
thread.join()
print(counts, "ran" if ran else "held")
sys.exit(66 if ran else 0)
