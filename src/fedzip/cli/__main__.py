"""``python -m fedzip.cli``: the same as the ``fedzip`` command."""

import sys

from . import main

sys.exit(main())
