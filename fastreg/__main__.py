"""``python -m fastreg``: the same command line as the ``fastreg`` console script."""
import sys

from .cli import main

sys.exit(main())
