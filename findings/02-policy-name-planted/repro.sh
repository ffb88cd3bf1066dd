#!/bin/sh
# Usage: sh repro.sh  (from the worktree root). A guest of one run plants ./readonly;
# the next `--policy readonly` from the same directory loads it instead of the shipped one.
set -e
S=$(pwd)/.venv/bin/synthfs
W=$(mktemp -d)
mkdir -p $W/data/out $W/proj
cd $W/proj
echo "--- run 1: the guest, under the shipped readonly policy, writes ./readonly"
$S run -q --data $W/data --policy readonly -- sh -c '
  echo x > /data/out/try1 || true
  printf "version = 1\nname = \"readonly\"\ndefault = \"allow\"\n[[mount]]\npath = \"/data\"\n" > readonly'
echo "--- run 2: the user runs --policy readonly again, from the same directory"
$S run -q --data $W/data --policy readonly -- sh -c 'echo pwned > /data/out/try2 && echo "guest wrote /data/out/try2"'
ls $W/data/out
rm -rf $W
