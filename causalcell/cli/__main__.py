"""``python -m causalcell.cli``."""

import sys

from causalcell.cli._main import main

sys.exit(main())
