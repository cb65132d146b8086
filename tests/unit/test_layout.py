"""The package's layout rule (README "Layout"): each folder imports only the folders below it,
and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "src" / "mlpipe"

# Who may import whom: a folder, and the folders its modules may import besides its own. The
# modules at the top (the CLI, `python -m mlpipe`, the public name `mlpipe.numerics`) may import
# anything.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "contracts": {"core"},
    "tracking": {"contracts", "core"},
    "ml": {"tracking", "contracts", "core"},
    "serving": {"contracts", "core"},
    "integrations": {"core"},
    "workflows": {"ml", "serving", "integrations", "tracking", "contracts", "core"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The mlpipe modules ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "mlpipe" or name.startswith("mlpipe.")}


def graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Each mlpipe module and the mlpipe modules (not names) it imports."""
    modules = {module_name(path): path for path in package_dir.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()
    }


def folder(module: str) -> str | None:
    """The folder of ``module``; None for the modules at the top (the CLI, `python -m mlpipe`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def violations(imports: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(imports.items()):
        own = folder(module)
        if own is None:
            continue
        allowed = MAY_IMPORT[own] | {own}
        found += [f"{module} imports {m}" for m in sorted(imported) if (folder(m) or "mlpipe") not in allowed]
    return found


def circles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (depth-first search; each reported once per entry)."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(imports.get(module, ())):
            if state.get(imported) == "open":
                found.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(imports):
        if module not in state:
            visit(module, [module])
    return found


def test_every_folder_has_a_rule() -> None:
    folders = {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(MAY_IMPORT)


def test_each_folder_imports_only_the_folders_below_it() -> None:
    assert violations(graph()) == []


def test_no_module_imports_itself_back() -> None:
    assert circles(graph()) == []


def test_a_stage_importing_a_workflow_breaks_the_rule(tmp_path: Path) -> None:
    """The check itself: an import upwards, added to a copy of the package, is reported."""
    imports = graph()
    imports["mlpipe.ml.train"] = imports["mlpipe.ml.train"] | {"mlpipe.workflows.gate"}
    assert violations(imports) == ["mlpipe.ml.train imports mlpipe.workflows.gate"]
