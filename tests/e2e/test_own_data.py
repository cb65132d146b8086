"""A project made a team's own: its datasets in data/raw, each `dvc add`-ed, one selected by
`data.source`. `prepare` depends on the selected one only, and the tests' copies of the project
still run (on digits) when its own data is not in them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import TINY_PARAMS, make_project, run, update_params

pytestmark = pytest.mark.slow


def write_images(
    folder: Path, classes: tuple[str, ...] = ("dark", "light"), per_class: int = 12, colour: bool = False
) -> None:
    """A tiny image-folder dataset: ``folder/<class>/<n>.png``, 8x8 images, grey or RGB."""
    rng = np.random.default_rng(0)
    shape = (8, 8, 3) if colour else (8, 8)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 128, size=shape, dtype=np.uint8) + np.uint8(127 * label)
            Image.fromarray(pixels).save(folder / name / f"{index:02d}.png")


def commit_all(project: Path, message: str) -> None:
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-q", "-m", message, cwd=project)


def prepare_deps(project: Path) -> list[str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return [dep["path"] for dep in lock["stages"]["prepare"]["deps"]]


def test_a_project_on_its_own_dvc_added_images_still_gives_test_copies_that_run(tmp_path: Path) -> None:
    team = make_project(tmp_path / "team")
    write_images(team / "data/raw/shapes")
    run("dvc", "add", "data/raw/shapes", cwd=team)
    update_params(team, {"data": {"dataset": "imagefolder", "source": "data/raw/shapes"}})
    commit_all(team, "Train on our own images")

    project = make_project(tmp_path / "project", root=team)
    run("dvc", "repro", "prepare", cwd=project)

    assert json.loads((project / "data/prepared/schema.json").read_text())["dataset"] == "digits"
    # the copy has no `.dvc` stage without its data, which `dvc repro` would fail to reproduce
    status = json.loads(run("dvc", "status", "--json", cwd=project).stdout)
    assert "prepare" not in status
    assert [stage for stage in status if stage.endswith(".dvc")] == []


def test_another_dataset_folder_in_data_raw_leaves_prepare_up_to_date(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run("dvc", "repro", "prepare", cwd=project)
    write_images(project / "data/raw/shapes")
    run("dvc", "add", "data/raw/shapes", cwd=project)
    commit_all(project, "A second dataset")

    assert json.loads(run("dvc", "status", "prepare", "--json", cwd=project).stdout) == {}
    selected = TINY_PARAMS["data"]["source"]
    assert [dep for dep in prepare_deps(project) if dep.startswith("data/")] == [selected]


def test_verify_rebuilds_a_project_on_its_own_dvc_added_data(tmp_path: Path) -> None:
    """`mlpipe verify` (CI's last step) copies the data a `.dvc` file tracks into its rebuild."""
    project = make_project(tmp_path / "project")
    write_images(project / "data/raw/shapes")
    run("dvc", "add", "data/raw/shapes", cwd=project)
    update_params(project, {"data": {"dataset": "imagefolder", "source": "data/raw/shapes"}})
    run("dvc", "repro", cwd=project)
    commit_all(project, "Our own images, and their results")

    result = run("mlpipe", "verify", cwd=project)
    assert "every output rebuilt from scratch equals dvc.lock" in result.stdout + result.stderr
