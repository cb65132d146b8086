"""README "Make it yours" swaps the model in three edits: applied as written to a copy of the
project, the pipeline trains, packages and serves the new network, and says which it is."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlpipe.contracts.manifest import CARD_FILE, MANIFEST_FILE
from mlpipe.core import paths, tables
from mlpipe.serving.model import ImageClassifier
from tests.conftest import REPO_ROOT, TINY_PARAMS, make_project, run

pytestmark = pytest.mark.slow

SECTION = "## Make it yours"


def readme_edits() -> list[tuple[str, str]]:
    """The section's code blocks that name a file on their first line: (path, code)."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION) :]
    section = section[: section.find("\n## ", len(SECTION))]
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", section, flags=re.DOTALL)
    return [(path, code) for path, code in blocks]


def apply_python(path: Path, code: str) -> None:
    """Each top-level definition in ``code`` replaces the one of the same name, or is appended."""
    for definition in ast.parse(code).body:
        segment = ast.get_source_segment(code, definition)
        assert segment is not None and isinstance(definition, ast.FunctionDef | ast.ClassDef)
        source = path.read_text()
        lines = source.splitlines(keepends=True)
        existing = [
            node
            for node in ast.parse(source).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == definition.name
        ]
        if existing:
            [node] = existing
            lines[node.lineno - 1 : node.end_lineno] = [segment + "\n"]
        else:
            lines.append("\n\n" + segment + "\n")
        path.write_text("".join(lines))


def apply_yaml(path: Path, code: str) -> None:
    """Each top-level section in ``code`` replaces the one of the same name."""
    params = yaml.safe_load(path.read_text())
    params.update(yaml.safe_load(code))
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def built_class(code: str) -> str:
    """The class `build_model` returns an instance of, in the model.py edit."""
    [build_model] = [
        node
        for node in ast.parse(code).body
        if isinstance(node, ast.FunctionDef) and node.name == "build_model"
    ]
    [returned] = [node for node in ast.walk(build_model) if isinstance(node, ast.Return)]
    assert isinstance(returned.value, ast.Call) and isinstance(returned.value.func, ast.Name)
    return returned.value.func.id


def test_the_readme_model_swap_trains_packages_and_serves_the_new_network(tmp_path: Path) -> None:
    edits = readme_edits()
    assert sorted(path for path, _ in edits) == [
        "params.yaml",
        "src/mlpipe/core/params.py",
        "src/mlpipe/ml/model.py",
    ]
    project = make_project(tmp_path / "project", {k: v for k, v in TINY_PARAMS.items() if k != "model"})
    for path, code in edits:
        (apply_yaml if path.endswith(".yaml") else apply_python)(project / path, code)
    run("git", "commit", "-qam", "A residual network", cwd=project)

    run("dvc", "repro", cwd=project, env={"PYTHONPATH": str(project / "src")})

    [model_edit] = [code for path, code in edits if path.endswith("model.py")]
    model_class = f"mlpipe.ml.model.{built_class(model_edit)}"
    model_params = yaml.safe_load((project / "params.yaml").read_text())["model"]
    package = project / paths.PACKAGE_DIR
    architecture = json.loads((package / MANIFEST_FILE).read_text())["architecture"]
    assert (architecture["class"], architecture["params"]) == (model_class, model_params)
    card = (package / CARD_FILE).read_text()
    assert f"- model: `{model_class}`, {architecture['parameter_count']:,} parameters" in card

    server = ImageClassifier(None, package)
    server.load()
    images = np.load(paths.split_images(paths.TEST_SPLIT, project / paths.PREPARED_DIR))[:64]
    labels = [p["label"] for p in server.predict({"instances": images.tolist()})["predictions"]]
    evaluated = [row["predicted"] for row in tables.read_csv(project / paths.PREDICTIONS_FILE)]
    assert labels == evaluated[:64]
