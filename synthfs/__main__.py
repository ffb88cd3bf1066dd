"""``python -m synthfs ARGS`` is the ``synthfs`` command."""

import sys

from synthfs.cli import main

sys.exit(main())
