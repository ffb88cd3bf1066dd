"""Enumerate a hidden (deny errno = ENOENT) directory by walking in and out of it."""

import os

HIDDEN = "/data/public/private"
for name in ["", "sec", "nope"]:
    p = f"{HIDDEN}/{name}/../../a.csv" if name else f"{HIDDEN}/../a.csv"
    try:
        os.stat(p)
        print(f"{p}: exists (a directory)")
    except OSError as e:
        print(f"{p}: {e.strerror}")
