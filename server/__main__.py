"""``python -m server ARGS`` is ``synthfs server ARGS``."""

import sys

from interposer.cli import main

sys.exit(main(["server", *sys.argv[1:]]))
