"""``--help`` of every command describes every flag and shows its default.

Walks every parser under ``headwise`` (so a flag added later without a help text, or
whose default the help does not show, fails here) and the bench scripts' own parsers."""

from __future__ import annotations

import argparse

import pytest

from headwise.cli import _parsers, build_parser, main

SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
            argparse._CountAction, argparse._HelpAction, argparse._VersionAction)


def _all_parsers():
    return list(_parsers(build_parser()))


def _name(action: argparse.Action) -> str:
    return "/".join(action.option_strings) or action.dest


def _problems(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    problems = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if not action.help or not action.help.strip():
            problems.append(f"{parser.prog} {_name(action)}: no help text")
            continue
        shown = formatter._expand_help(action)
        if isinstance(action, SWITCHES):
            continue  # a switch is off unless given
        if action.required:
            continue  # a required flag or positional has no default
        if "default" not in shown:
            problems.append(f"{parser.prog} {_name(action)}: help does not show the default "
                            f"({action.default!r}): {shown!r}")
        elif action.default not in (None, argparse.SUPPRESS) and "(default: %(default)s)" not in (action.help or "") \
                and str(action.default) not in shown and "(default" not in shown:
            problems.append(f"{parser.prog} {_name(action)}: help shows no default {action.default!r}")
    return problems


def test_every_flag_of_every_command_has_help_showing_its_default():
    parsers = _all_parsers()
    assert {p.prog for p in parsers} >= {"headwise train", "headwise check", "headwise generate",
                                         "headwise eval", "headwise bench", "headwise plan",
                                         "headwise inspect"}
    problems = [msg for p in parsers for msg in _problems(p)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("prog", [p.prog for p in _all_parsers()])
def test_help_prints_and_exits_0(prog, capsys):
    argv = prog.split()[1:] + ["--help"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: " + prog)
    parser = next(p for p in _all_parsers() if p.prog == prog)
    for action in parser._actions:
        if action.default not in (None, argparse.SUPPRESS, False, True) and action.option_strings \
                and action.help != argparse.SUPPRESS and not isinstance(action, SWITCHES):
            # the formatted help shows the actual default value (as argparse prints it)
            text = " ".join(out.split())
            assert f"default: {action.default}" in text or "(default" in (action.help or ""), (
                _name(action), action.default)


def test_attention_bench_help_shows_defaults(capsys):
    import runpy
    import sys

    from headwise.app.bench_command import BENCH_DIR

    old = sys.argv
    sys.argv = [str(BENCH_DIR / "attention.py"), "--help"]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(BENCH_DIR / "attention.py"), run_name="__main__")
    finally:
        sys.argv = old
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--seq", "--repeats", "--out"):
        assert flag in text
    assert "(default: [128, 512, 2048])" in text and "(default: 5)" in text
