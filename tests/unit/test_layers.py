"""The layer order of docs/architecture.md holds: import-linter's contracts, and the
supervision runtime (a module, which import-linter cannot take as a root) imports
nothing of the application but the thread base."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = {"actors", "broker", "config", "console", "messages", "node", "rules", "store", "bench",
       "tests"}
GENERIC_ACTOR = ("actors/base.py", "actors/inflight.py", "actors/repository.py")


def imported_roots(path: Path) -> set[str]:
    """The top-level names a module imports, anywhere in it (functions included)."""
    roots: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            roots |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            roots.add(n.module.split(".")[0])
    return roots


def imported_modules(path: Path) -> set[str]:
    """The modules a module imports from, anywhere in it."""
    mods: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            mods |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            mods.add(n.module)
    return mods


def test_the_supervision_runtime_knows_no_application() -> None:
    """Of the application, it imports the thread base alone, which is standard library."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    mods = imported_modules(ROOT / "supervisor.py")
    app = {m for m in mods if m.split(".")[0] in APP}
    assert app == {"config.service"}, app
    assert {m.split(".")[0] for m in mods - app} <= stdlib | {"pykka"}, mods
    assert imported_roots(ROOT / "config" / "service.py") <= stdlib


def test_the_rules_import_only_messages_and_the_standard_library() -> None:
    """``immutables`` (persistent maps for frozen state) is the one library allowed."""
    allowed = set(sys.stdlib_module_names) | {"__future__", "messages", "rules", "immutables"}
    for path in sorted((ROOT / "rules").glob("*.py")):
        roots = imported_roots(path)
        assert roots <= allowed, (path.name, roots - allowed)


def test_the_generic_entity_actor_names_no_domain_message() -> None:
    """What a domain's commands and events mean is its rules' and its actor's to say.

    No registered message but the generic reply is named in the generic modules, as an
    identifier, an attribute or a string.
    """
    from messages.registry import all_specs

    domain = {spec.type for spec in all_specs()} - {"CommandResult"}
    for name in GENERIC_ACTOR:
        tree = ast.parse((ROOT / name).read_text())
        named = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        named |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        named |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  for a in n.names}
        named |= {n.value for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not named & domain, (name, named & domain)


def test_imported_roots_sees_imports_inside_functions(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("import os\n\ndef f():\n    from node import Node\n    return Node\n")
    assert imported_roots(mod) == {"os", "node"}


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout
