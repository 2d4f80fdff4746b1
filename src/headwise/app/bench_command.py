"""``headwise bench NAME``: run the benchmark script ``NAME.py`` from a bench folder.

The scripts are not part of the installed package: they live in the repository's
``bench/`` folder. ``headwise bench`` looks for ``NAME.py`` in ``--bench-dir`` when it
is given; otherwise in ``./bench`` under the current folder (a checkout you are in),
then in the ``bench/`` folder of the source checkout this package runs from (an
editable install, ``make bench``). A missing script is refused with the folders it
looked in and the benchmarks they hold.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

#: the bench/ folder of the source checkout this package runs from (absent in a wheel)
BENCH_DIR = Path(__file__).resolve().parents[3] / "bench"
#: where ``headwise bench NAME`` writes without ``--out`` (relative to the current folder);
#: the committed results in bench/results/ are only written when --out names them
DEFAULT_OUT_DIR = Path("runs") / "bench"


def bench_dirs(bench_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for benchmark scripts, in order: ``bench_dir`` alone when
    given, else ``./bench`` and then :data:`BENCH_DIR` (once if they are the same)."""
    if bench_dir is not None:
        return [Path(bench_dir)]
    dirs = [Path("bench"), BENCH_DIR]
    if dirs[0].resolve() == BENCH_DIR.resolve():
        return [BENCH_DIR]
    return dirs


def _available(dirs: list[Path]) -> list[str]:
    names = {p.stem for d in dirs if d.is_dir() for p in d.glob("*.py") if not p.stem.startswith("_")}
    return sorted(names)


def find_script(name: str, bench_dir: str | Path | None = None) -> Path:
    """``NAME.py`` in the first of :func:`bench_dirs` that holds it; FileNotFoundError
    naming the folders looked in (and whether each exists) and the benchmarks found."""
    if not name or name != Path(name).name or name in (".", "..") or name.endswith(".py"):
        raise ValueError(
            f"NAME {name!r}: give a benchmark's name, e.g. 'attention', not a path or file name "
            "(--bench-dir names the folder)"
        )
    dirs = bench_dirs(bench_dir)
    for d in dirs:
        script = d / f"{name}.py"
        if script.is_file():
            return script
    looked = ", ".join(f"{d}" + ("" if d.is_dir() else " (not a folder)" if d.exists() else " (missing)")
                       for d in dirs)
    found = _available(dirs)
    hint = "" if found else "; the scripts come with a source checkout: give --bench-dir CHECKOUT/bench"
    raise FileNotFoundError(
        f"NAME {name!r}: no such benchmark; available: {found or 'none'} (looked in {looked}){hint}"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark from bench/ (comparisons with the peer tools)",
        description="Run bench/NAME.py; extra arguments go to the script (see NAME --help). The script is "
                    "looked for in --bench-dir, else in ./bench, else in the bench/ folder of the source "
                    "checkout headwise runs from.",
    )
    p.add_argument("--bench-dir", metavar="DIR", default=None,
                   help="the folder holding NAME.py (default: ./bench, then the source checkout's bench/)")
    p.add_argument("name", help="benchmark name, e.g. 'attention'")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="arguments for the script; without --out the results go to a new file "
                        f"under {DEFAULT_OUT_DIR}/ in the current folder, never over an existing one")
    p.set_defaults(func=run)


def run(args) -> int:
    script = find_script(args.name, getattr(args, "bench_dir", None))
    argv = list(args.args)
    given = _out_value(argv)
    if given is not None and not _asks_help(argv) and Path(given).is_dir():
        # refused before the benchmark runs, not after it when the script writes
        where = "is empty" if not given else "is a folder"
        raise ValueError(f"--out {given!r} {where}; give the path of a JSON file to write")
    if given and not _asks_help(argv):  # a folder that cannot be made: refused now, not after the run
        above = next((p for p in Path(given).parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise ValueError(f"--out {given!r} is inside {str(above)!r}, which is a file; give the path of a "
                             "JSON file in a folder")
    if not _gives_out(argv) and not _asks_help(argv):
        out = _fresh_out(args.name)
        print(f"headwise bench {args.name}: writing the results to {out} (give --out to choose)",
              file=sys.stderr)
        argv += ["--out", str(out)]
    old = sys.argv
    sys.argv = [str(script), *argv]
    # as `python bench/NAME.py` runs it: its folder first on sys.path, for the sibling
    # scripts it imports (gelu.py imports train_throughput)
    folder = str(script.parent.resolve())
    sys.path.insert(0, folder)
    before = set(sys.modules)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # the script's argparse refused an argument (it printed why)
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(f"headwise bench {args.name}: error: {e.code}", file=sys.stderr)
        return 2
    finally:
        sys.argv = old
        sys.path.remove(folder)
        _forget_modules_of(folder, set(sys.modules) - before)
    return 0


def _forget_modules_of(folder: str, names: set[str]) -> None:
    """Drop the modules of ``names`` that were imported from ``folder`` (a bench folder's
    sibling scripts), so that a later run from another folder imports its own."""
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None) or ""
        if Path(file).resolve().parent == Path(folder):
            del sys.modules[name]


def _gives_out(argv: list[str]) -> bool:
    return any(a == "--out" or a.startswith("--out=") for a in argv)


def _out_value(argv: list[str]) -> str | None:
    """The value of the last ``--out X`` / ``--out=X`` in ``argv`` (None if not given)."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith("--out="):
            value = a[len("--out="):]
        elif a == "--out" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


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
