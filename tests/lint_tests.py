"""A check that every test can fail: ``python -m tests.lint_tests [ROOT]``.

Two defects slip past ruff and mypy and make a test pass whatever the code does:

* an assert that cannot fail: ``assert True``, or an ``or`` one of whose operands is
  a truthy constant;
* a test function (``def test_*`` in ``tests/**/test_*.py``) that checks nothing:
  no ``assert``, no ``pytest.raises``/``warns``/``fail``, and no call to a helper that
  does. Helpers are functions of the same module or imported from ``tests.*``
  modules, followed a few calls deep; a helper checks if its body asserts, raises
  ``AssertionError`` or calls ``pytest.raises``/``warns``/``fail``.

Prints one ``path:line: message`` line per offender and exits 1 if there is any.
ROOT is the directory holding the ``tests`` package (default: this repository).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "tests"
HELPER_DEPTH = 3  # test -> helper -> helper -> helper
PYTEST_CHECKS = frozenset({"raises", "warns", "fail", "deprecated_call"})

# Tests that check nothing by design, each with its reason: "path::name" -> reason.
# A last resort: a test should rather assert what it means.
ALLOWED: dict[str, str] = {}

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Offence:
    """One defect: where, and what."""

    path: Path
    line: int
    message: str

    def render(self, root: Path) -> str:
        """``path:line: message``, the path relative to ``root`` when it can be."""
        shown = self.path.relative_to(root) if self.path.is_relative_to(root) else self.path
        return f"{shown}:{self.line}: {self.message}"


@dataclass
class _Module:
    """A parsed module of the tests package: its functions and what its names import."""

    name: str
    tree: ast.Module
    functions: dict[str, FunctionNode] = field(default_factory=dict)
    # local name -> (module, attribute) for "from m import a", (module, None) for modules
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)


class Linter:
    """Finds the offences under ``root/tests``, parsing each module once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._modules: dict[str, _Module | None] = {}

    # --- modules ---------------------------------------------------------------------
    def module(self, name: str) -> _Module | None:
        """The parsed module ``name`` if it is part of the tests package, else None."""
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            return None
        if name not in self._modules:
            self._modules[name] = self._load(name)
        return self._modules[name]

    def _load(self, name: str) -> _Module | None:
        base = self.root.joinpath(*name.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return self._parse(name, path, package=path.name == "__init__.py")
        return None

    def _parse(self, name: str, path: Path, *, package: bool) -> _Module:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        mod = _Module(name, tree)
        here = name if package else name.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, FunctionNode):
                mod.functions[node.name] = node
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        mod.imports[alias.asname] = (alias.name, None)
                    else:
                        top = alias.name.partition(".")[0]
                        mod.imports[top] = (top, None)
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(here, node.module, node.level)
                for alias in node.names:
                    mod.imports[alias.asname or alias.name] = (source, alias.name)
        return mod

    def module_name(self, path: Path) -> str:
        """The dotted name of a file under ``root``."""
        rel = path.relative_to(self.root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        return ".".join(parts)

    # --- resolving a call to a function ----------------------------------------------
    def resolve(self, mod: _Module, func: ast.expr) -> tuple[_Module, FunctionNode] | None:
        """The tests-package function a call's ``func`` names, if it names one."""
        dotted = _dotted(func)
        if dotted is None:
            return None
        head, *rest = dotted
        if not rest and head in mod.functions:
            return mod, mod.functions[head]
        if head not in mod.imports:
            return None
        source, attr = mod.imports[head]
        qualified = source.split(".") + ([] if attr is None else [attr])
        return self._find([*qualified, *rest], HELPER_DEPTH)

    def _find(self, dotted: list[str], hops: int) -> tuple[_Module, FunctionNode] | None:
        """The function at a dotted path (``tests.conftest.eventually``), re-exports followed."""
        for split in range(len(dotted) - 1, 0, -1):  # the longest module prefix first
            mod = self.module(".".join(dotted[:split]))
            if mod is None:
                continue
            if split != len(dotted) - 1:
                return None  # a class's method or a module's attribute's: not followed
            name = dotted[-1]
            if name in mod.functions:
                return mod, mod.functions[name]
            if name in mod.imports and hops > 0:
                source, attr = mod.imports[name]
                return self._find(source.split(".") + ([] if attr is None else [attr]),
                                  hops - 1)
            return None
        return None

    # --- what counts as checking ---------------------------------------------------------
    def checks(self, mod: _Module, fn: FunctionNode, depth: int = HELPER_DEPTH) -> bool:
        """Whether ``fn`` asserts, directly or through helpers up to ``depth`` deep."""
        for node in ast.walk(fn):
            if isinstance(node, ast.Assert):
                return True
            if isinstance(node, ast.Raise) and _raises_assertion_error(node):
                return True
            if isinstance(node, ast.Call):
                if _is_pytest_check(mod, node.func):
                    return True
                if depth > 0:
                    found = self.resolve(mod, node.func)
                    if found is not None and found[1] is not fn and self.checks(
                            found[0], found[1], depth - 1):
                        return True
        return False

    # --- the two defects -------------------------------------------------------------
    def lint(self) -> list[Offence]:
        """Every offence under ``root/tests``, in path and line order."""
        offences: list[Offence] = []
        for path in sorted((self.root / PACKAGE).rglob("*.py")):
            mod = self.module(self.module_name(path))
            if mod is None:
                continue
            offences.extend(_cannot_fail(path, mod.tree))
            if path.name.startswith("test_"):
                offences.extend(self._unchecked(path, mod))
        return offences

    def _unchecked(self, path: Path, mod: _Module) -> Iterator[Offence]:
        for fn in _test_functions(mod.tree):
            key = f"{path.relative_to(self.root).as_posix()}::{fn.name}"
            if key not in ALLOWED and not self.checks(mod, fn):
                yield Offence(path, fn.lineno, f"{fn.name} has no assertion")


def _absolute(here: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = here.split(".") if here else []
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, module] if module else base)


def _dotted(expr: ast.expr) -> list[str] | None:
    names: list[str] = []
    while isinstance(expr, ast.Attribute):
        names.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    names.append(expr.id)
    return names[::-1]


def _is_pytest_check(mod: _Module, func: ast.expr) -> bool:
    dotted = _dotted(func)
    if dotted is None:
        return False
    if len(dotted) == 2 and dotted[1] in PYTEST_CHECKS:
        return mod.imports.get(dotted[0]) == ("pytest", None)
    if len(dotted) == 1:
        source = mod.imports.get(dotted[0])
        return source is not None and source[0] == "pytest" and source[1] in PYTEST_CHECKS
    return False


def _raises_assertion_error(node: ast.Raise) -> bool:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return isinstance(exc, ast.Name) and exc.id == "AssertionError"


def _always_true(test: ast.expr) -> bool:
    if isinstance(test, ast.Constant):
        return bool(test.value)
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        return any(_always_true(v) for v in test.values)
    return False


def _cannot_fail(path: Path, tree: ast.Module) -> Iterator[Offence]:
    owners: dict[int, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, FunctionNode):
            for node in ast.walk(fn):
                owners.setdefault(id(node), fn.name)  # the outermost: the test itself
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and _always_true(node.test):
            owner = owners.get(id(node), "<module>")
            yield Offence(path, node.lineno, f"{owner} asserts something that cannot fail: "
                                             f"assert {ast.unparse(node.test)}")


def _test_functions(tree: ast.Module) -> Iterator[FunctionNode]:
    for node in tree.body:
        if isinstance(node, FunctionNode) and node.name.startswith("test"):
            yield node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, FunctionNode) and item.name.startswith("test"):
                    yield item


def main(argv: Sequence[str] | None = None) -> int:
    """Lint ROOT's tests (argv[0], default this repository); 1 if anything is found."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(args[0]).resolve() if args else Path(__file__).resolve().parents[1]
    offences = Linter(root).lint()
    for o in offences:
        print(o.render(root))
    return 1 if offences else 0


if __name__ == "__main__":
    sys.exit(main())
