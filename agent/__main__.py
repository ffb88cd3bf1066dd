"""``python -m agent ARGS`` is ``synthfs agent ARGS`` (used by the embedded launcher)."""

import os
import sys

from synthfs.cli import main

status = main(["agent", *sys.argv[1:]])
# Everything is closed by now (sockets, thread pools, the cache index): skip the
# interpreter's teardown of every module and object, ~30 ms that each `synthfs run
# --data` would wait for at its end. An exception still ends the usual way.
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
