"""``python -m gpuckpt.cli``: the same as the ``gpuckpt`` console script."""

import sys

from . import main

sys.exit(main())
