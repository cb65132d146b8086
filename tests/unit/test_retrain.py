"""retrain's parsing of import `.dvc` files, its branch names and its GitLab settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlpipe.core.params import parse_params
from mlpipe.integrations.gitlab import GitLab, GitLabError
from mlpipe.workflows import gate
from mlpipe.workflows.retrain import Import, RetrainError, description, dvc_file
from tests.unit.test_report_markdown import example_report

IMPORT = {
    "md5": "bd2270c447e18c312935d8f6ee2e50dc",
    "frozen": True,
    "deps": [{"md5": "6ea46d53348e675e87743182f72de908.dir", "path": "/srv/digits"}],
    "outs": [{"md5": "6ea46d53348e675e87743182f72de908.dir", "nfiles": 2, "path": "digits"}],
}


def write(path: Path, stage: object) -> Path:
    path.write_text(yaml.safe_dump(stage))
    return path


def test_an_import_is_named_after_its_content_hash(tmp_path: Path) -> None:
    data = Import.read(write(tmp_path / "digits.dvc", IMPORT))
    assert data.source == "/srv/digits"
    assert data.version == "6ea46d53348e"
    assert data.branch == "retrain/data-6ea46d53348e"


def test_a_version_aware_import_without_one_hash_is_named_after_its_file_versions(tmp_path: Path) -> None:
    files = [{"relpath": "0/a.png", "version_id": "v1"}]
    stage = {**IMPORT, "outs": [{"path": "digits", "files": files}]}
    first = Import.read(write(tmp_path / "a.dvc", stage)).version
    files[0]["version_id"] = "v2"
    second = Import.read(write(tmp_path / "b.dvc", stage)).version
    assert len(first) == len(second) == 12
    assert first != second


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"outs": [{"md5": "abc", "path": "digits"}]}, "tracks data but imports nothing"),
        ("just text", "tracks data but imports nothing"),
    ],
)
def test_a_dvc_file_that_is_no_import_is_refused_with_how_to_import(
    tmp_path: Path, stage: object, message: str
) -> None:
    with pytest.raises(RetrainError, match=message) as raised:
        Import.read(write(tmp_path / "digits.dvc", stage))
    assert "dvc import-url URL" in str(raised.value)


def test_a_missing_dvc_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match=r"digits.dvc: not found; import it with `dvc import-url"):
        Import.read(tmp_path / "digits.dvc")


def test_the_dataset_comes_from_data_source() -> None:
    params = parse_params({"data": {"dataset": "imagefolder", "source": "data/raw/digits/"}})
    assert dvc_file(params) == Path("data/raw/digits.dvc")
    with pytest.raises(RetrainError, match=r"data\.source in params\.yaml is null"):
        dvc_file(parse_params({}))


def test_a_tables_import_is_the_dvc_file_beside_its_csv() -> None:
    table = {"dataset": "table", "source": "data/raw/loans.csv", "target": "default"}
    assert dvc_file(parse_params({"data": table})) == Path("data/raw/loans.csv.dvc")
    with pytest.raises(RetrainError, match=r"data\.source in params\.yaml is null"):
        dvc_file(parse_params({"data": {"dataset": "penguins"}}))  # bundled: nothing imported


def test_the_description_names_the_versions_and_holds_the_report_without_image_links(tmp_path: Path) -> None:
    data = Import.read(write(tmp_path / "digits.dvc", IMPORT))
    decision = gate.decide({"test_accuracy": 0.99, "test_macro_f1": 0.98}, parse_params({}).gate, None)
    report = example_report()
    text = description(data, "0123456789ab", decision, report)
    assert "version `0123456789ab` → `6ea46d53348e`" in text
    assert decision.summary() in text
    assert text.endswith("\n" + report.render(figures=None))
    assert "](" not in text


def test_gitlab_settings_come_from_the_ci_environment() -> None:
    env = {"CI_API_V4_URL": "https://gitlab.example.com/api/v4/", "CI_PROJECT_ID": "42", "GITLAB_TOKEN": "x"}
    assert GitLab.from_env(env) == GitLab("https://gitlab.example.com/api/v4", "42", "x")
    with pytest.raises(GitLabError, match=r"^CI_PROJECT_ID, GITLAB_TOKEN not set"):
        GitLab.from_env({"CI_API_V4_URL": "https://gitlab.example.com/api/v4"})


def test_uncommitted_changes_stop_retrain_before_it_touches_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from mlpipe.workflows import retrain

    (tmp_path / "data/raw").mkdir(parents=True)
    write(tmp_path / "data/raw/digits.dvc", IMPORT)
    (tmp_path / "params.yaml").write_text("data: {dataset: imagefolder, source: data/raw/digits}\n")
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "params.yaml").write_text("data: {dataset: imagefolder, source: data/raw/digits, seed: 1}\n")
    monkeypatch.chdir(tmp_path)
    params = parse_params({"data": {"dataset": "imagefolder", "source": "data/raw/digits"}})
    with pytest.raises(RetrainError, match=r"uncommitted changes \(M params\.yaml\)") as raised:
        retrain.run(params)
    assert "\n" not in str(raised.value)
    assert (tmp_path / "data/raw/digits.dvc").read_text() == yaml.safe_dump(IMPORT)
