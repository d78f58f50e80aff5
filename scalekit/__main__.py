"""``python -m scalekit``: the command line (see :mod:`scalekit.cli`)."""

import sys

from scalekit.cli import main

if __name__ == "__main__":  # guarded: LocalCluster workers re-import __main__ (spawn)
    sys.exit(main())
