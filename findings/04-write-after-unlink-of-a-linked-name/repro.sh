#!/bin/sh
# Usage: sh repro.sh  (from the worktree root)
set -e
W=$(mktemp -d); D=$(cd "$(dirname "$0")" && pwd)
mkdir -p $W/native $W/data/out
echo "--- natively"
python3 $D/guest.py $W/native; echo "file d: $(cat $W/native/d)"
for m in --write-through --write-back; do
  rm -f $W/data/out/*
  echo "--- synthfs run $m"
  .venv/bin/synthfs run -q $m --data $W/data -- python3 $D/guest.py /data/out
  echo "served directory's d: $(cat $W/data/out/d)"
done
rm -rf $W
