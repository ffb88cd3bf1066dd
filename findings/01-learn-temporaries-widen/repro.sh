#!/bin/sh
# Usage: sh repro.sh  (from the worktree root; needs .venv)
set -e
W=$(mktemp -d)
mkdir -p $W/data/fixtures/sub $W/data/secrets
echo f1 > $W/data/fixtures/a; echo f2 > $W/data/fixtures/sub/b
echo s1 > $W/data/secrets/k1; echo s2 > $W/data/secrets/k2; echo pub > $W/data/readme
D=$(dirname "$0")
.venv/bin/synthfs learn --data $W/data -o $W/learned.toml -- python3 $D/guest.py
grep -n 'paths = ' $W/learned.toml
# The enforced run reads a secret and deletes a fixture: the learning run did neither.
.venv/bin/synthfs run --data $W/data --policy $W/learned.toml -- python3 -c "
import os
print('read /data/secrets/k1:', open('/data/secrets/k1').read().strip())
os.unlink('/data/fixtures/a'); print('deleted /data/fixtures/a')"
ls $W/data/fixtures
rm -rf $W
