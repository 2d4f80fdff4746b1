"""``python -m headwise.train ARGS`` = ``headwise train ARGS``; what torchrun starts::

    torchrun --nproc-per-node 4 -m headwise.train --objective clm --batch-size 64 ...

Inside torchrun (RANK and WORLD_SIZE set) each process trains its rank's share of the
run (headwise.distributed); otherwise it is the single-process run.
"""

from __future__ import annotations

import argparse
import sys

from .command import register


def main(argv: list[str] | None = None) -> int:
    from ..cli import _parsers
    from ..cli_types import HelpFormatter

    parser = argparse.ArgumentParser(prog="python -m headwise.train")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    for p in _parsers(parser):
        p.formatter_class = HelpFormatter
    # the arguments are exactly those of `headwise train`
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    from ..cli import run_parsed

    return run_parsed(args, "headwise train")


if __name__ == "__main__":
    sys.exit(main())
