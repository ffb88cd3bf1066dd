"""``python -m server ARGS`` is ``synthfs server ARGS`` (used by the embedded launcher)."""

import os
import sys

from synthfs.cli import main

status = main(["server", *sys.argv[1:]])
# Everything is closed by now (sockets, thread pools, the backend): skip the
# interpreter's teardown of every module and object, ~30 ms that each `synthfs run
# --data` would wait for at its end. An exception still ends the usual way.
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
