#!/bin/sh
# Usage: sh repro.sh  (from the worktree root)
set -e
W=$(mktemp -d); D=$(dirname "$0")
mkdir -p $W/data/out $W/data/in $W/host
echo in > $W/data/in/y; echo host > $W/host/h
gcc -O1 -pthread -o $W/unsharefs $D/unsharefs.c
echo "== natively: T1 stays in $W/host while T2 (unshare CLONE_FS) moves"
(cd $W && ./unsharefs $W/host $W/data/out h ../in/y)
echo "== under synthfs: T1 in $W/host, T2 unshares and chdirs to /data/out"
.venv/bin/synthfs run -q --data $W/data -- $W/unsharefs $W/host /data/out h ../in/y
rm -rf $W
