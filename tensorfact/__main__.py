"""``python -m tensorfact``: see :mod:`tensorfact.cli`."""

import sys

from tensorfact.cli import main

sys.exit(main())
