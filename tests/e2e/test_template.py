"""copier on this repository as the template, with the real copier: a made project carries its
answers and none of the demo's names, trains on its own images and passes its own tests, trains
on its own table, and `copier update` brings in a later template commit while keeping the team's
edits."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import copier
import pytest
import yaml

from mlpipe.integrations import template
from mlpipe.workflows.tuning.space import load_space
from tests.conftest import BIN_DIR, make_project, project_files, run
from tests.e2e.test_own_data import commit_all, write_images

pytestmark = pytest.mark.slow

COPIER = str(BIN_DIR / "copier")
PROJECT = ("--data", "project_name=acme-vision", "--data", "model_name=acme-vision-net")
IMAGES = "data/raw/shapes"
# the demo's names where they would stand for a made project's own
DEMO_NAMES = re.compile(
    "|".join(
        re.escape(name)
        for name in (
            template.DEMO_MODEL_NAME,
            *(f"{template.DEMO_PROJECT_NAME}-{env}" for env in template.ENVIRONMENTS),
            f"../{template.DEMO_PROJECT_NAME}-storage",
        )
    )
)


def copier_copy(template_repo: Path, dest: Path, *data: str) -> Path:
    run(
        COPIER,
        "copy",
        "--trust",
        "--vcs-ref",
        "HEAD",
        "--defaults",
        *data,
        str(template_repo),
        str(dest),
        cwd=dest.parent,
    )
    run("git", "init", "-q", "-b", "main", cwd=dest)
    commit_all(dest, "From the template")
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} holds no {old!r}"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project on tiny params, as a git repository copier can copy and update from."""
    return make_project(tmp_path_factory.mktemp("template") / "mlpipe")


@pytest.fixture(scope="module")
def made(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project made from the template to train on its own image folder, committed."""
    return copier_copy(
        template_repo,
        tmp_path_factory.mktemp("made") / "acme-vision",
        *PROJECT,
        *("--data", "dataset=imagefolder", "--data", f"data_source={IMAGES}"),
    )


def test_a_made_project_holds_its_answers_and_none_of_the_demos_names(made: Path) -> None:
    params = yaml.safe_load((made / "params.yaml").read_text())
    assert (params["data"]["dataset"], params["data"]["source"]) == ("imagefolder", IMAGES)
    assert params["package"]["model_name"] == "acme-vision-net"
    for remote in ("data", "models"):
        url = run("dvc", "config", f"remote.{remote}.url", cwd=made).stdout.strip()
        assert Path(url) == made.parent / "acme-vision-storage" / remote
    assert run("dvc", "remote", "default", cwd=made).stdout.strip() == "data"
    assert (made / "README.md").read_text().startswith("# acme-vision\n")
    answers = yaml.safe_load((made / ".copier-answers.yml").read_text())
    assert answers["project_name"] == "acme-vision"
    files = project_files(made)
    assert not {"copier.yml", "dvc.lock", "tests/unit/test_template.py"} & set(files)
    assert not (made / "reports").exists()
    # the tests keep their own fixed model name; the task defines the demo's names
    kept = [
        f"{name}: {match}"
        for name in files
        if not name.startswith("tests/") and name != "src/mlpipe/integrations/template.py"
        for match in DEMO_NAMES.findall((made / name).read_text(errors="replace"))
    ]
    assert kept == []


def test_a_made_project_trains_on_its_own_colour_images_and_passes_its_fast_tests(made: Path) -> None:
    write_images(made / IMAGES, colour=True)
    run("dvc", "add", IMAGES, cwd=made)
    commit_all(made, "Our shapes")
    run("dvc", "repro", cwd=made)

    schema = json.loads((made / "data/prepared/schema.json").read_text())
    assert (schema["dataset"], schema["classes"], schema["channels"]) == ("imagefolder", ["dark", "light"], 3)
    assert json.loads((made / "models/package/package.json").read_text())["name"] == "acme-vision-net"
    # the made project's own code and tests, not this project's (the same package name)
    env = {"PYTHONPATH": os.pathsep.join([str(made / "src"), str(made)])}
    imported = run(sys.executable, "-c", "import mlpipe; print(mlpipe.__file__)", cwd=made, env=env).stdout
    assert Path(imported.strip()).is_relative_to(made / "src")
    tests = run(
        sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider", "tests/unit",
        cwd=made, env=env, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]


def write_wines(path: Path) -> None:
    """scikit-learn's wine data as a team's CSV: 178 wines, 13 measurements, a region column of
    text, a few empty cells, and the cultivar as the label."""
    from sklearn.datasets import load_wine

    wines = load_wine(as_frame=True)
    table = wines.data.copy()
    table["region"] = [("north", "south", "coast")[i % 3] for i in range(len(table))]
    table.loc[table.index % 10 == 0, "alcohol"] = None
    table.loc[table.index % 15 == 0, "region"] = None
    table["cultivar"] = [f"cultivar-{label}" for label in wines.target]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


def test_a_made_project_trains_on_its_own_csv_and_packages_it(template_repo: Path, tmp_path: Path) -> None:
    wines = "data/raw/wines.csv"
    made = copier_copy(
        template_repo,
        tmp_path / "acme-wine",
        *("--data", "project_name=acme-wine", "--data", "model_name=acme-wine-net"),
        *("--data", "dataset=table", "--data", f"data_source={wines}", "--data", "target=cultivar"),
    )
    write_wines(made / wines)
    run("dvc", "add", wines, cwd=made)
    commit_all(made, "Our wines")
    run("dvc", "repro", cwd=made)

    schema = json.loads((made / "data/prepared/schema.json").read_text())
    assert schema["classes"] == ["cultivar-0", "cultivar-1", "cultivar-2"]
    columns = {column["name"]: column for column in schema["columns"]}
    assert len(columns) == 14
    assert columns["region"]["type"] == "category"
    assert columns["region"]["levels"] == ["coast", "north", "south"]
    assert columns["alcohol"]["type"] == "number"
    assert columns["alcohol"]["missing"] > 0 and columns["region"]["missing"] > 0
    package = json.loads((made / "models/package/package.json").read_text())
    assert (package["name"], package["dataset"]) == ("acme-wine-net", "table")
    assert package["input"]["kind"] == "table"
    assert package["architecture"]["params"]["width"] is None
    # its tuning searches what its MLP has
    assert "model.width" not in load_space(made / "tune.yaml").params


def test_copier_update_brings_a_template_commit_and_keeps_the_teams_edits(
    template_repo: Path, tmp_path: Path
) -> None:
    upstream = tmp_path / "mlpipe"
    run("git", "clone", "-q", str(template_repo), str(upstream), cwd=tmp_path)
    project = copier_copy(upstream, tmp_path / "acme-vision", *PROJECT)
    # the team: another model and more epochs
    model = project / "src/mlpipe/ml/model.py"
    model.write_text(model.read_text() + "\n\n# acme-vision: our own network goes here\n")
    edit(project / "params.yaml", "  epochs: 4\n", "  epochs: 7\n")
    commit_all(project, "Our model")
    # the template, later: a line in the same module and another param
    upstream_model = upstream / "src/mlpipe/ml/model.py"
    upstream_model.write_text("# the template's later commit\n" + upstream_model.read_text())
    edit(upstream / "params.yaml", "evaluate:\n  batch_size: 1024\n", "evaluate:\n  batch_size: 512\n")
    commit_all(upstream, "A later template commit")

    run(COPIER, "update", "--trust", "--defaults", "--vcs-ref", "HEAD", cwd=project)

    merged = model.read_text()
    assert merged.startswith("# the template's later commit\n")
    assert merged.endswith("# acme-vision: our own network goes here\n")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert (params["train"]["epochs"], params["evaluate"]["batch_size"]) == (7, 512)
    assert params["package"]["model_name"] == "acme-vision-net"
    # no conflict, nothing rejected, and the answers stay where the task put them
    status = run("git", "status", "--porcelain", cwd=project).stdout.splitlines()
    assert sorted(line[3:] for line in status) == [
        ".copier-answers.yml",
        "params.yaml",
        "src/mlpipe/ml/model.py",
    ]
    assert "acme-vision-storage" in (project / ".dvc/config").read_text()


def test_the_defaults_come_from_the_new_folders_name(template_repo: Path, tmp_path: Path) -> None:
    worker = copier.run_copy(
        str(template_repo),
        tmp_path / "Acme_Vision",
        defaults=True,
        pretend=True,
        unsafe=True,
        vcs_ref="HEAD",
        quiet=True,
    )
    answers = worker.answers.combined
    assert (answers["project_name"], answers["model_name"]) == ("acme-vision", "acme-vision-classifier")
    assert (answers["dataset"], answers["data_source"]) == ("digits", "data/raw/none")
    assert answers["data_remote"] == "../acme-vision-storage/data"
