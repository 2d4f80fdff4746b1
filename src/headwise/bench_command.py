"""``headwise bench NAME``: run a benchmark script from the repository's bench/ folder."""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
#: where ``headwise bench NAME`` writes without ``--out`` (relative to the current folder);
#: the committed results in bench/results/ are only written when --out names them
DEFAULT_OUT_DIR = Path("runs") / "bench"


def _available() -> list[str]:
    if not BENCH_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark from bench/ (comparisons with the peer tools)",
        description="Run bench/NAME.py; extra arguments go to the script (see NAME --help).",
    )
    p.add_argument("name", help="benchmark name, e.g. 'attention'")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="arguments for the script; without --out the results go to a new file "
                        f"under {DEFAULT_OUT_DIR}/ in the current folder, never over an existing one")
    p.set_defaults(func=run)


def run(args) -> int:
    script = BENCH_DIR / f"{args.name}.py"
    if not script.is_file():
        found = _available()
        where = f"in {BENCH_DIR}" if found else f"({BENCH_DIR} is missing: benchmarks run from a source checkout)"
        raise FileNotFoundError(
            f"NAME {args.name!r}: no such benchmark; available: {found or 'none'} {where}"
        )
    argv = list(args.args)
    if not _gives_out(argv) and not _asks_help(argv):
        out = _fresh_out(args.name)
        print(f"headwise bench {args.name}: writing the results to {out} (give --out to choose)",
              file=sys.stderr)
        argv += ["--out", str(out)]
    old = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # the script's argparse refused an argument (it printed why)
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(f"headwise bench {args.name}: error: {e.code}", file=sys.stderr)
        return 2
    finally:
        sys.argv = old
    return 0


def _gives_out(argv: list[str]) -> bool:
    return any(a == "--out" or a.startswith("--out=") for a in argv)


def _asks_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _fresh_out(name: str) -> Path:
    """``runs/bench/NAME-YYYYmmdd-HHMMSS.json``, with a suffix if that file exists."""
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = DEFAULT_OUT_DIR / f"{stem}.json"
    k = 1
    while out.exists():
        out = DEFAULT_OUT_DIR / f"{stem}-{k}.json"
        k += 1
    return out
