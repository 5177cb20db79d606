"""Print fastreg : peer speed-ups measured in one run; the same as ``fastreg bench``.

    python benchmarks/compare.py [--quick] [--only GROUP[,GROUP]] [--threads N] [--markdown]

The cases live in ``fastreg/_bench/compare_<group>.py`` so the installed ``fastreg bench``
command has them too.
"""
import sys

from fastreg._bench import main

if __name__ == "__main__":
    sys.exit(main())
