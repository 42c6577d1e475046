"""``python -m sttd.engine``: the same as ``sttd-engine``."""

import sys

from .server import main

sys.exit(main())
