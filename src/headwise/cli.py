"""The ``headwise`` command. Each subcommand lives in a command module of
:mod:`headwise.app` that exposes ``register(subparsers)``, which adds its parser and
sets ``func``; this file only lists them, parses and reports refusals."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

import torch

from .app import bench_command, inspect_command, main_job, plan_command, train_command
from .app.cli_types import HelpFormatter
from .attention.backends import DISPATCHER
from .checks import check_setting
from .hardware import memory
from .kernels import TiledOptions, cpu_linear, gelu, set_tiled_options
from .train.loop import NonFiniteError

#: the command modules, each with register(subparsers), in the order they register
COMMANDS = [
    train_command,
    main_job,  # after train_command: makes `train` tell the whole story (adds --no-report, --conllu)
    bench_command,
    plan_command,
    inspect_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwise",
        description="Multi-head attention you can train, look inside, and run fast.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    for p in _parsers(parser):
        p.formatter_class = HelpFormatter  # every flag's help shows its default
    return parser


def _parsers(parser: argparse.ArgumentParser):
    """``parser`` and every subcommand parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _parsers(child)


#: the errors a command raises for bad input or an unusable environment; each is
#: printed as one line with exit code 2. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, TypeError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit status (2: refused input, with
    one line on stderr saying why; argparse's own refusals included, and ``--help`` is 0)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and the reason
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        _check_utf8(sys.argv[1:] if argv is None else argv, os.environ)
    except ValueError as e:
        print(f"headwise {args.command}: error: {e}", file=sys.stderr)
        return 2
    try:  # the kernels' HEADWISE_TILED_* variables: read here, once, for the whole command
        set_tiled_options(TiledOptions.from_env(os.environ))
        DISPATCHER.timing_enabled()  # backend="auto"'s variables, read at each use: refused now, not mid-run
        DISPATCHER.budget()
        DISPATCHER.cache_file()
        _check_process_settings(os.environ)  # read where used, which a command may never reach
    except ValueError as e:
        print(f"headwise: error: {e}", file=sys.stderr)
        return 2
    _warn_unknown_variables(os.environ)
    return run_parsed(args, f"headwise {args.command}")


#: the process settings read from the environment where they are first used:
#: (variable, what it sets, the values it takes)
PROCESS_SETTINGS = (
    (cpu_linear.ENV, "CPU linear", cpu_linear.CHOICES),
    (gelu.ENV, "CPU GELU", gelu.CHOICES),
    (memory.ENV, "malloc setting", memory.CHOICES),
)


def _check_process_settings(environ) -> None:
    """ValueError naming a PROCESS_SETTINGS variable set to a value it does not take, for
    every command (a command that never uses it would otherwise ignore it silently)."""
    for name, what, choices in PROCESS_SETTINGS:
        value = environ.get(name)
        if value is not None:
            check_setting(name, what, value, choices)


#: every HEADWISE_* variable that headwise reads (the package's, and those of its GPU
#: tests, which bench/gpu_check.sh sets); any other is a typo that would do nothing
KNOWN_VARIABLES = (
    "HEADWISE_CACHE", "HEADWISE_MALLOC", "HEADWISE_CPU_LINEAR", "HEADWISE_CPU_GELU",
    "HEADWISE_AUTOTUNE_BACKEND", "HEADWISE_AUTOTUNE_BUDGET_MS", "HEADWISE_DISPATCH_CACHE",
    "HEADWISE_TILED_AUTOTUNE", "HEADWISE_TILED_BWD", "HEADWISE_TILED_TMA", "HEADWISE_TILED_FWD",
    "HEADWISE_TILED_DKDV",
    "HEADWISE_GPU_CASES", "HEADWISE_GPU_AUTOTUNE_ALL",  # the GPU tests (tests/kernels/test_tiled_gpu.py)
)


def _warn_unknown_variables(environ) -> None:
    """One warning line for each HEADWISE_* variable headwise does not read (a misspelt
    name would otherwise be ignored without a word), with the nearest known name."""
    for name in sorted(n for n in environ if n.startswith("HEADWISE_") and n not in KNOWN_VARIABLES):
        tail = len("HEADWISE_")  # compared past the prefix that every name shares
        near = difflib.get_close_matches(name[tail:], [k[tail:] for k in KNOWN_VARIABLES], n=1)
        hint = f" (did you mean HEADWISE_{near[0]}?)" if near else ""
        print(f"headwise: warning: {name} is not a variable headwise reads; it has no effect{hint}",
              file=sys.stderr)


def _check_utf8(argv: list[str], environ: dict[str, str] | os._Environ) -> None:
    """ValueError naming the first argument (by its flag) or HEADWISE_* variable that is
    not UTF-8: bytes the locale could not decode arrive as lone surrogates, which no
    file headwise reads or writes (tokenizer.json, run.json, summary.txt, ...) can hold,
    so a run would fail only at its end, or a folder's files not be read at all."""
    given = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            given.append(tuple(arg.split("=", 1)))
        elif i and argv[i - 1].startswith("-") and not arg.startswith("-"):
            given.append((argv[i - 1], arg))
        else:
            given.append(("the argument", arg))
    given += [(name, value) for name, value in environ.items() if name.startswith("HEADWISE_")]
    for name, value in given:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            c = ord(e.object[e.start])
            if 0xDC80 <= c <= 0xDCFF:
                what, shown = f"byte 0x{c - 0xDC00:02x}", os.fsencode(value).decode("utf-8", "backslashreplace")
            else:
                what, shown = repr(chr(c)), value.encode("utf-8", "backslashreplace").decode()
            raise ValueError(f"{name} is not UTF-8 text ({what} at character {e.start} of '{shown}'); headwise "
                             "keeps names and text in UTF-8 files, so give it in UTF-8") from None


def run_parsed(args: argparse.Namespace, prog: str) -> int:
    """Run the parsed command ``args.func(args)``; an expected error (bad input, an
    unusable environment, a diverged run) becomes one line ``PROG: error: ...`` and
    status 2; Ctrl-C one line and status 130, a closed output status 141."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # (train says what its run keeps itself, and returns)
        print(f"{prog}: interrupted (Ctrl-C); stopped", file=sys.stderr)
        return 130
    except BrokenPipeError as e:
        if e.filename is not None:  # a file or pipe the command opened itself: an error of the input
            print(f"{prog}: error: {_describe(e)}", file=sys.stderr)
            return 2
        return _output_closed()
    except EXPECTED_ERRORS as e:
        print(f"{prog}: error: {_describe(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not _expected_runtime_error(e):
            raise
        print(f"{prog}: error: {_describe(e)}", file=sys.stderr)
        return 2


#: the status of a command whose reader went away (``headwise generate ... | head -c 10``):
#: what a shell reports for a program that SIGPIPE ended, 128 + 13
OUTPUT_CLOSED = 141


def _output_closed() -> int:
    """Stop quietly after the standard output was closed by its reader: nothing more is
    written to it (not even Python's flush at exit, which would print an ignored error)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout (a test's capture)
        pass
    return OUTPUT_CLOSED


def _expected_runtime_error(e: RuntimeError) -> bool:
    """A RuntimeError that reports the run or the machine, not a bug: a training loss
    that became non-finite, or a GPU out of memory."""
    return isinstance(e, (torch.cuda.OutOfMemoryError, NonFiniteError))


def _describe(e: BaseException) -> str:
    """The message of ``e``; an OSError without one of ours gets its path and reason."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
