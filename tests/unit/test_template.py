"""copier's task (src/mlpipe/integrations/template.py) on a copy of the files it edits: each
answer lands where README "Make a project from this template" says, and a bad answer stops it
before it edits anything."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import get_args

import configobj
import pytest
import yaml

from mlpipe.core.params import DataParams, load_params
from mlpipe.integrations import template
from mlpipe.integrations.template import Answers, TemplateError
from mlpipe.workflows.tuning.space import load_space
from tests.conftest import REPO_ROOT

ANSWERS = Answers(
    project_name="acme-vision",
    model_name="acme-vision-net",
    dataset="imagefolder",
    data_source="data/raw/shapes",
    data_remote="s3://acme-ml/vision/data",
    models_remote="../acme-vision-models",
    mlflow_tracking_uri="http://mlflow.acme.internal:5000",
)
# A team's own table: a CSV file and its label column.
TABLE_ANSWERS = Answers(
    **{**vars(ANSWERS), "dataset": "table", "data_source": "data/raw/wine.csv", "target": "cultivar"}
)


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the task edits, copied from this project, after the task ran on ANSWERS."""
    project = tmp_path_factory.mktemp("made")
    for name in {*template.replacements(ANSWERS), template.README, "params.yaml", ".dvc/config"}:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, project / name)
    template.apply(ANSWERS, project)
    return project


def comments(text: str) -> list[str]:
    return [line.partition("#")[2] for line in text.splitlines() if "#" in line]


def test_params_get_the_answers_and_keep_every_comment(applied: Path) -> None:
    text = (applied / "params.yaml").read_text()
    params = yaml.safe_load(text)
    assert params["data"]["dataset"] == "imagefolder"
    assert params["data"]["source"] == "data/raw/shapes"
    assert params["package"]["model_name"] == "acme-vision-net"
    assert comments(text) == comments((REPO_ROOT / "params.yaml").read_text())
    # the rest as it was, nulls spelt as the file spells them
    original = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert {k: v for k, v in params.items() if k not in ("data", "package")} == {
        k: v for k, v in original.items() if k not in ("data", "package")
    }
    assert params["data"]["image_size"] is None
    assert "image_size: null" in text


def test_idx_classes_go_into_params_as_a_list(tmp_path: Path) -> None:
    answers = Answers(
        **{**vars(ANSWERS), "dataset": "idx", "data_source": "data/raw/idx", "classes": "cat, dog"}
    )
    text = template.params_text((REPO_ROOT / "params.yaml").read_text(), answers)
    assert yaml.safe_load(text)["data"]["classes"] == ["cat", "dog"]


def made_params(text: str, answers: Answers, tmp_path: Path) -> Path:
    """params.yaml made from ``text`` for ``answers``, written where load_params reads it."""
    path = tmp_path / "params.yaml"
    path.write_text(template.params_text(text, answers))
    return path


def test_a_table_project_gets_its_file_and_label_column_and_an_mlp(tmp_path: Path) -> None:
    template_text = (REPO_ROOT / "params.yaml").read_text()
    path = made_params(template_text, TABLE_ANSWERS, tmp_path)
    params = load_params(path)
    assert (params.data.dataset, params.data.source, params.data.target) == (
        "table",
        "data/raw/wine.csv",
        "cultivar",
    )
    assert params.model.width is None
    assert comments(path.read_text()) == comments(template_text)


def test_the_bundled_table_needs_no_file_and_no_label_column(tmp_path: Path) -> None:
    answers = Answers(**{**vars(ANSWERS), "dataset": "penguins", "data_source": "data/raw/none"})
    params = load_params(made_params((REPO_ROOT / "params.yaml").read_text(), answers, tmp_path))
    assert (params.data.dataset, params.data.source, params.data.label_column) == (
        "penguins",
        None,
        "species",
    )
    assert params.model.width is None


def test_the_made_params_are_valid_whatever_data_the_templates_params_select(tmp_path: Path) -> None:
    # a template whose own params.yaml trains on a table, made into an image project, and back
    table_template = template.params_text((REPO_ROOT / "params.yaml").read_text(), TABLE_ANSWERS)
    images = load_params(made_params(table_template, ANSWERS, tmp_path))
    assert (images.data.dataset, images.data.target, images.model.width) == ("imagefolder", None, 32)
    image_template = (tmp_path / "params.yaml").read_text()
    assert load_params(made_params(image_template, TABLE_ANSWERS, tmp_path)).model.width is None


def test_a_table_projects_tuning_searches_its_mlp_not_conv_channels(tmp_path: Path) -> None:
    template_tune = (REPO_ROOT / "tune.yaml").read_text()
    made_params((REPO_ROOT / "params.yaml").read_text(), TABLE_ANSWERS, tmp_path)
    (tmp_path / "tune.yaml").write_text(template.tune_text(template_tune, TABLE_ANSWERS))
    # the space fits the project's params.yaml: every value it can propose is valid there
    space = load_space(tmp_path / "tune.yaml")
    assert template.IMAGE_ONLY_SEARCH not in space.params
    assert "model.hidden" in space.params
    assert comments((tmp_path / "tune.yaml").read_text()) == comments(template_tune)


def test_the_dvc_remotes_are_the_answers(applied: Path) -> None:
    config = configobj.ConfigObj(str(applied / ".dvc/config"))
    assert config["core"]["remote"] == "data"
    assert config['remote "data"']["url"] == "s3://acme-ml/vision/data"
    # DVC keeps a local path relative to .dvc/
    assert config['remote "models"']["url"] == "../../acme-vision-models"


def test_deploy_names_the_projects_namespaces_and_model(applied: Path) -> None:
    for env in ("production", "staging"):
        kustomization = yaml.safe_load((applied / f"deploy/overlays/{env}/kustomization.yaml").read_text())
        assert kustomization["namespace"] == f"acme-vision-{env}"
    monitor = yaml.safe_load((applied / "deploy/monitoring/podmonitor.yaml").read_text())
    assert (
        monitor["spec"]["selector"]["matchLabels"]["serving.kserve.io/inferenceservice"] == "acme-vision-net"
    )
    assert "LOCAL_DATA_URL := ../acme-vision-storage/data" in (applied / "mk/storage.mk").read_text()
    assert "\nname: acme-vision\n" in (applied / "compose.yaml").read_text()


def test_the_readme_has_the_projects_title_and_tells_how_to_update(applied: Path) -> None:
    readme = (applied / "README.md").read_text()
    assert readme.startswith("# acme-vision\n")
    assert template.TEMPLATE_SECTION not in readme
    assert "\n## Updating from the template\n" in readme
    assert template.LAYOUT_LINES[1] in readme
    # the sections around it are kept
    original = (REPO_ROOT / "README.md").read_text()
    assert readme.count("\n## ") == original.count("\n## ")


def test_the_tracking_server_is_named_where_the_docs_say_to_set_it(applied: Path) -> None:
    for name in template.TRACKING_MENTIONS:
        assert "`http://mlflow.acme.internal:5000`" in (applied / name).read_text()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"project_name": "Acme Vision"}, "project_name:"),
        ({"project_name": "a" * 53}, "project_name:"),
        ({"model_name": "Acme_Net"}, "package.model_name:"),
        ({"dataset": "tfrecords"}, "data.dataset:"),
        ({"data_source": "data/raw/none"}, "source is required for dataset 'imagefolder'"),
        ({"dataset": "table", "data_source": "data/raw/wine.csv"}, "target is required for dataset 'table'"),
        ({"target": "cultivar"}, "target applies to table datasets only"),
        ({"data_remote": ""}, "data_remote:"),
        ({"mlflow_tracking_uri": "http://ci:fake@mlflow.example"}, "mlflow_tracking_uri: has a password"),
    ],
)
def test_a_bad_answer_is_refused_with_the_question_it_came_from(change: dict[str, str], named: str) -> None:
    with pytest.raises(TemplateError, match=named):
        Answers(**{**vars(ANSWERS), **change}).check()


def test_the_task_says_a_bad_answer_in_one_line_and_edits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# mlpipe\n")
    monkeypatch.chdir(tmp_path)
    options = {**vars(ANSWERS), "project_name": "Acme Vision"}
    with pytest.raises(SystemExit) as exited:
        template.main([f"--{key.replace('_', '-')}={value}" for key, value in options.items()])
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("mlpipe: error: project_name: 'Acme Vision'")
    assert readme.read_text() == "# mlpipe\n"


def test_copier_offers_every_dataset_the_pipeline_reads() -> None:
    questions = yaml.safe_load((REPO_ROOT / "copier.yml").read_text())
    offered = set(questions["dataset"]["choices"].values())
    assert set(get_args(DataParams.model_fields["dataset"].annotation)) <= offered


def test_copier_asks_every_answer_the_task_takes() -> None:
    questions = {
        key for key in yaml.safe_load((REPO_ROOT / "copier.yml").read_text()) if not key.startswith("_")
    }
    assert questions == set(vars(ANSWERS))


def test_the_tuning_study_is_named_after_the_project(applied: Path) -> None:
    tune = (applied / "tune.yaml").read_text()
    assert "\nstudy: acme-vision\n" in tune
    assert template.DEMO_STUDY not in tune
    assert comments(tune) == comments((REPO_ROOT / "tune.yaml").read_text())
