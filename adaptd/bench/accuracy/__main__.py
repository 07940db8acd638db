"""`python -m adaptd.bench.accuracy [flags]`: the same as `adaptd bench accuracy [flags]`."""

from __future__ import annotations

import argparse
import sys


def _main(argv: list[str] | None = None) -> int:
    from . import add_arguments, main

    prog = "python -m adaptd.bench.accuracy"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.prog = prog
    return main(args)


if __name__ == "__main__":
    sys.exit(_main())
