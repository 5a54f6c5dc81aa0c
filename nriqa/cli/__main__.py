"""``python -m nriqa.cli``: the ``nriqa`` command."""

import sys

from nriqa.cli import main

if __name__ == "__main__":
    sys.exit(main())
