"""``python -m causalcell.cli``."""

import sys

from causalcell.cli._main import main

if __name__ == "__main__":
    sys.exit(main())
