"""The layout shows the architecture, and the imports keep to it (docs/architecture.md).

Read from the code, not from a list kept by hand: every module of the package is parsed,
and each ``desimirror`` import it makes must point down the layers, or within its own
package, and never at another module's private names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import desimirror

PACKAGE = Path(desimirror.__file__).parent
#: Lower layers first. A module may import its own package and the layers below it.
LAYERS = {
    "core": 0,
    "state": 1,
    "integrity": 2,
    "storage": 3,
    "pipeline": 4,
    "access": 4,
    "view": 4,
}
#: The one sideways import allowed: the web view shows the totals exactly as ``status``
#: computes them (the public API of pipeline/status.py), not a second computation.
SIDEWAYS = {("view", "desimirror.pipeline.status")}
TOP = {"cli": 5}  # the command line may use everything
DEV = "dev"  # the demo's servers and synthetic release: used by the CLI and tests only
#: The public alias ``desimirror.data`` of :mod:`desimirror.access.data`, and the
#: ``python -m desimirror`` entry point: outside the layers by design.
ALIASES = {"desimirror.data", "desimirror.__main__"}


def _package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in {*LAYERS, *TOP, DEV}:
        return parts[1]
    if len(parts) == 2 and parts[1] in {*LAYERS, *TOP, DEV}:
        return parts[1]
    return "core"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for each desimirror import."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "desimirror":
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "desimirror":
                    found.append((alias.name, [], node.lineno))
    return found


def _rank(package: str) -> int:
    return TOP.get(package, LAYERS.get(package, 0))


def test_every_import_points_down_the_layers() -> None:
    modules = _modules()
    wrong = []
    for name, path in sorted(modules.items()):
        if name in ALIASES:
            continue
        own = _package_of(name)
        for target, names, line in _imports(path):
            # "from desimirror.state import schema" imports a module of that package
            theirs = _package_of(target if target != "desimirror" else f"desimirror.{names[0]}")
            if theirs == own or (own, target) in SIDEWAYS:
                continue
            if theirs == DEV and own not in TOP:
                wrong.append(f"{path.name}:{line} imports {target}: dev is for the CLI only")
            elif own == DEV and theirs != "core":
                wrong.append(f"{path.name}:{line} imports {target}: dev uses only core modules")
            elif theirs != DEV and own != DEV and _rank(theirs) >= _rank(own):
                wrong.append(f"{path.name}:{line} ({own}) imports {target} ({theirs})")
    assert wrong == []


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = []
    for name, path in sorted(_modules().items()):
        for target, names, line in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                wrong.append(f"{path.name}:{line} takes {', '.join(private)} from {target}")
    assert wrong == []


def test_the_layers_are_folders() -> None:
    for package in (*LAYERS, *TOP, DEV):
        if package != "core":
            assert (PACKAGE / package / "__init__.py").is_file(), package
    top_level = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    core = {"errors", "units", "text", "progress", "processes", "retrying", "binaries", "data"}
    assert top_level <= core


_SQL = re.compile(
    r"^\s*(SELECT \S|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TEMP )?(TABLE|INDEX)"
    r"|DROP TABLE|ALTER TABLE|PRAGMA \w)"
)


def test_sql_lives_in_the_state_layer_only() -> None:
    """No module outside ``state/`` runs a statement or holds SQL text."""
    wrong = []
    for name, path in sorted(_modules().items()):
        if _package_of(name) == "state":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if call and node.func.attr in {"execute", "executemany", "executescript"}:
                wrong.append(f"{path.name}:{node.lineno} runs SQL")
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and _SQL.match(text):
                wrong.append(f"{path.name}:{node.lineno} holds SQL: {node.value[:40]!r}")
    assert wrong == []
