"""``headwise bench NAME``: run a benchmark script from the repository's bench/ folder."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


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
    p.add_argument("args", nargs=__import__("argparse").REMAINDER, help="arguments for the script")
    p.set_defaults(func=run)


def run(args) -> int:
    script = BENCH_DIR / f"{args.name}.py"
    if not script.is_file():
        found = _available()
        where = f"in {BENCH_DIR}" if found else f"({BENCH_DIR} is missing: benchmarks run from a source checkout)"
        raise FileNotFoundError(
            f"no benchmark named {args.name!r}; available: {found or 'none'} {where}"
        )
    old = sys.argv
    sys.argv = [str(script), *args.args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    return 0
