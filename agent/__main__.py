"""``python -m agent ...`` is ``synthfs agent ...`` (used by the embedded launcher)."""

import sys

from interposer.cli import main

sys.exit(main(["agent", *sys.argv[1:]]))
