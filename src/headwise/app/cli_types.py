"""argparse types that check ranges, shared by every command.

``type=positive_int`` makes argparse itself refuse ``--steps 0`` with exit code 2 and
a message that names the flag, the value and what is accepted::

    headwise train: error: argument --steps: must be an integer >= 1, got '0'

Also the help formatter every command uses (it shows each flag's default), and
:func:`refuse_unused`, the one refusal of a setting given where it would do nothing.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "positive_int", "nonneg_int", "seed_int", "thread_count", "positive_float", "nonneg_float", "int_at_least",
    "float_in",
    "run_directory", "HelpFormatter", "refuse_unused", "refuse_pipe",
]


def _int(text: str, accepted: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None


def _float(text: str, accepted: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (and <= ``high`` when given)."""
    accepted = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")

    def parse(text: str) -> int:
        value = _int(text, accepted)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        return value

    parse.__name__ = f"int >= {low}"  # argparse names the type in some messages
    return parse


positive_int = int_at_least(1)
positive_int.__name__ = "positive int"
nonneg_int = int_at_least(0)
nonneg_int.__name__ = "non-negative int"
#: a random seed: torch's generators take at most 2**64 - 1, and a run seeds one with seed + 1
seed_int = int_at_least(0, 2**63 - 1)
seed_int.__name__ = "seed"
#: torch CPU threads: 0 (torch's choice) up to the CPUs this machine has (far more made
#: the BLAS library crash, and more threads than CPUs never help)
thread_count = int_at_least(0, os.cpu_count() or 1)
thread_count.__name__ = "thread count"


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in the given range (closed unless ``*_open``)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    accepted = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        value = _float(text, accepted)
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        return value

    parse.__name__ = accepted
    return parse


positive_float = float_in(0.0, low_open=True)
nonneg_float = float_in(0.0)


def run_directory(text: str) -> Path:
    """An argparse type: a headwise run directory (a folder holding run.json)."""
    path = Path(text)
    accepted = "a run directory written by headwise train (a folder holding run.json)"
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r}: no such folder; expected {accepted}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; expected {accepted}")
    if not (path / "run.json").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} holds no run.json; expected {accepted}")
    return path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each flag's help (``none`` for a flag that is unset
    unless given), unless the help already gives the default, the flag is a switch
    (store_true/store_false) or it is required."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default" in text:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse._HelpAction, argparse._VersionAction)):
            return text
        if action.default is argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs in (argparse.REMAINDER, argparse.ZERO_OR_MORE):
            return text
        if action.required or (not action.option_strings and action.default is None):
            return text  # a required flag or positional has no default
        if action.default is None:
            return text + " (default: none)"
        return text + " (default: %(default)s)"


def refuse_unused(settings: dict[str, object], context: str, remedy: str = "drop {it}") -> None:
    """Raise ValueError when a setting in ``settings`` (flag -> value; None or False: not
    given) was given although ``context`` makes it do nothing. The message names each
    given flag with its value (a switch by its flag alone), then ``context``, then
    ``remedy``, whose ``{it}`` becomes "it" or "them"::

        --top-k 5 and --seed 3 have no effect with --temperature 0; drop them
    """
    given = [flag if value is True else f"{flag} {value}" for flag, value in settings.items()
             if value is not None and value is not False]
    if given:
        many = len(given) > 1
        raise ValueError(f"{' and '.join(given)} {'have' if many else 'has'} no effect {context}; "
                         + remedy.format(it="them" if many else "it"))


def refuse_pipe(flag: str, text: str | None) -> None:
    """Raise ValueError when ``text`` (the value of ``flag``) names something that exists
    but is neither a file nor a folder: a pipe (``/dev/stdin``, ``<(...)``) or a device
    (``/dev/null``). A pipe's text goes to the first read, and headwise reads an input more
    than once (a corpus: its fingerprint, the tokenizer, the blocks) or checks that it is a file."""
    if text is None:
        return
    path = Path(text)
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise ValueError(f"{flag} {text!r} is not a file or folder but a pipe or device, which can be read "
                         "only once; save the text to a file and give that")
