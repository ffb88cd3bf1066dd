"""Renames that move a file from under a rule: rules are about paths.

Usage: rename.py MODE DATA MARKER

DATA/rn_MODE holds the tree (made by the test). The policy lets this program
do anything on DATA except:

subtree: DATA/rn_subtree/dir/inner/** is denied (everything), DATA/rn_subtree/dir
         itself is not: rename dir to moved, then read moved/inner/secret
into:    reads of DATA/rn_into/private/** are denied (renames are not): rename
         private into the readable DATA/rn_into/public/x, then read x/secret
host:    DATA is a host directory: the [host] rules let BOX be written (so it may
         be renamed) but nothing below it be read, and DATA/pub/** be read:
         rename box to pub/box, then read pub/box/secret

Exit 66 when the secret was read under its new name; 0 when the rename or the
read was refused (it prints which, with the errno); 2 usage.
"""

import errno
import os
import sys

ESCAPED, REFUSED, USAGE = 66, 0, 2
MOVES = {
    "subtree": ("rn_subtree/dir", "rn_subtree/moved", "rn_subtree/moved/inner/secret"),
    "into": ("rn_into/private", "rn_into/public/x", "rn_into/public/x/secret"),
    "host": ("box", "pub/box", "pub/box/secret"),
}


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in MOVES:
        print(__doc__)
        return USAGE
    mode, data, marker = sys.argv[1:]
    src, dst, secret = (f"{data}/{p}" for p in MOVES[mode])
    try:
        os.rename(src, dst)
    except OSError as e:
        print(f"{mode}: rename refused: {errno.errorcode.get(e.errno, e.errno)}")
        return REFUSED
    try:
        with open(secret) as f:
            got = f.read()
    except OSError as e:
        print(f"{mode}: renamed, but the read was refused: {errno.errorcode.get(e.errno)}")
        return REFUSED
    finally:
        os.rename(dst, src)  # put it back
    if marker in got:
        print(f"{mode}: ESCAPED, read the secret under its new name")
        return ESCAPED
    print(f"{mode}: read something else: {got[:40]!r}")
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
