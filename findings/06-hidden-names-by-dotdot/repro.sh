#!/bin/sh
# Usage: sh repro.sh  (from the worktree root). The shipped per-app policy hides
# /data/public/private (ENOENT) from python3; python3 may read /data/public.
set -e
W=$(mktemp -d); D=$(cd "$(dirname "$0")" && pwd)
mkdir -p $W/data/public/private
echo s > $W/data/public/private/sec; echo a > $W/data/public/a.csv
.venv/bin/synthfs run -q --data $W/data --policy per-app -- /usr/bin/python3 $D/probe.py
rm -rf $W
