"""dvc.yaml's code deps are exactly the modules each stage runs (its import closure in mlpipe)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "src" / "mlpipe"
# What `mlpipe <stage>` runs besides the stage's module: the CLI pins the numerics first. The CLI
# module itself only dispatches (its other commands never run in a stage, and the tuner's
# warm-server client it asks first only decides which process runs the stage), so it is no dep.
ENTRY_MODULES = ("mlpipe.core.numerics",)


def module_file(module: str) -> Path | None:
    """The source file of an mlpipe module (a package's __init__.py), None if it is not ours."""
    parts = module.split(".")
    if parts[0] != "mlpipe":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Every mlpipe module ``path`` imports, at the top or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if module_file(name) is not None}


def closure(*roots: str) -> set[str]:
    """The files of ``roots`` and of every mlpipe module they import, transitively."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        parents = module.split(".")
        # importing mlpipe.a.b runs mlpipe/a/__init__.py too
        pending += [
            ".".join(parents[:i]) for i in range(2, len(parents)) if module_file(".".join(parents[:i]))
        ]
        pending += sorted(imported_modules(module_file(module), module) - seen)  # type: ignore[arg-type]
    files = {module_file(m) for m in seen}
    return {f.relative_to(REPO_ROOT).as_posix() for f in files if f is not None and f.stat().st_size}


STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_exactly_the_code_it_runs(stage: str) -> None:
    definition = STAGES[stage]
    assert definition["cmd"].split()[:2] == ["mlpipe", stage]
    code_deps = {d for d in definition["deps"] if d.startswith("src/") and d.endswith(".py")}
    # package data a stage reads (the model card's template) is a dep too; it must exist
    assert all((REPO_ROOT / d).is_file() for d in definition["deps"] if d.startswith("src/"))
    runs = closure(f"mlpipe.ml.{stage}", *ENTRY_MODULES)
    assert sorted(runs - code_deps) == [], f"dvc.yaml: stage {stage} misses these modules it runs"
    assert sorted(code_deps - runs) == [], f"dvc.yaml: stage {stage} lists modules it does not run"


def test_the_closure_follows_imports_inside_functions() -> None:
    assert "src/mlpipe/ml/datasets/fashion_mnist.py" in closure("mlpipe.ml.prepare")
    assert "src/mlpipe/tracking/runs.py" in closure("mlpipe.ml.train")
