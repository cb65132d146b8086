"""A project made a team's own: its datasets in data/raw, each `dvc add`-ed, one selected by
`data.source`. `prepare` depends on the selected one only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import make_project, run

pytestmark = pytest.mark.slow


def write_images(folder: Path, classes: tuple[str, ...] = ("dark", "light"), per_class: int = 12) -> None:
    """A tiny image-folder dataset: ``folder/<class>/<n>.png``, 8x8 grey images."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 128, size=(8, 8), dtype=np.uint8) + np.uint8(127 * label)
            Image.fromarray(pixels).save(folder / name / f"{index:02d}.png")


def commit_all(project: Path, message: str) -> None:
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-q", "-m", message, cwd=project)


def prepare_deps(project: Path) -> list[str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return [dep["path"] for dep in lock["stages"]["prepare"]["deps"]]


def test_another_dataset_folder_in_data_raw_leaves_prepare_up_to_date(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run("dvc", "repro", "prepare", cwd=project)
    write_images(project / "data/raw/shapes")
    run("dvc", "add", "data/raw/shapes", cwd=project)
    commit_all(project, "A second dataset")

    assert json.loads(run("dvc", "status", "prepare", "--json", cwd=project).stdout) == {}
    selected = "data/raw/none"
    assert [dep for dep in prepare_deps(project) if dep.startswith("data/")] == [selected]
