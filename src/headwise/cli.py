"""The ``headwise`` command. Each subcommand lives in the module that owns its
work and exposes ``register(subparsers)``, which adds its parser and sets
``func``; this file only lists them."""

from __future__ import annotations

import argparse
import importlib
import sys

# module paths, each with register(subparsers)
COMMANDS = [
    "headwise.train.command",
    "headwise.bench_command",
    "headwise.hardware.command",
    "headwise.inspect.command",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwise",
        description="Multi-head attention you can train, look inside, and run fast.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for path in COMMANDS:
        importlib.import_module(path).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"headwise {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
