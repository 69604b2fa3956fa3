"""``python -m tensorfact``: see :mod:`tensorfact.cli`."""

import sys

from tensorfact.cli import main

if __name__ == "__main__":
    sys.exit(main())
