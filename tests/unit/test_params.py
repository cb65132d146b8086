"""params.yaml validation: bad values stop a stage with a message naming the key."""

from pathlib import Path

import pytest

from mlpipe.core.errors import ParamsError
from mlpipe.core.params import Params, load_params, parse_params
from tests.conftest import REPO_ROOT


def test_the_projects_params_file_is_valid() -> None:
    load_params(REPO_ROOT / "params.yaml")


def test_empty_params_take_the_documented_defaults() -> None:
    assert parse_params({}) == Params()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"lr": -0.1}}, "train.lr: Input should be greater than 0 (got -0.1)"),
        ({"train": {"epochs": "5"}}, "train.epochs: Input should be a valid integer (got '5')"),
        ({"train": {"lrr": 0.1}}, "train.lrr: unknown key"),
        ({"trian": {}}, "trian: unknown key"),
        ({"model": {"dropout": 1.0}}, "model.dropout: Input should be less than 1"),
        ({"train": {"device": "tpu"}}, "train.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"data": {"test_fraction": 0.5, "val_fraction": 0.45}}, "data: val_fraction + test_fraction"),
        ({"data": {"dataset": "imagefolder"}}, "data: source is required for dataset 'imagefolder'"),
        ({"data": {"image_size": [28, 28]}}, "data: image_size applies to dataset 'imagefolder' only"),
        ({"data": {"source": None}}, "data.source: null is no path for DVC; write data/raw/none"),
        ({"data": {"source": "data/raw/mine"}}, "data: source of dataset 'digits' is data/raw/none"),
        ({"package": {"model_name": "Bad_Name"}}, "package.model_name: String should match pattern"),
        ({"train": {"amp": "yes"}}, "train.amp: Input should be a valid boolean"),
        ({"data": {"channels": 2}}, "data.channels: Input should be 1 or 3"),
        (
            {"data": {"channels": 3}},
            "data: channels: 3 needs colour images (dataset 'imagefolder'); digits is",
        ),
        ({"data": {"classes": ["a", "b"]}}, "data: classes applies to dataset 'idx' only"),
        (
            {"data": {"dataset": "idx", "source": "data/raw/mine"}},
            "data: classes is required for dataset 'idx'",
        ),
        ({"data": {"dataset": "idx", "classes": ["a", "b"]}}, "data: source is required for dataset 'idx'"),
        (
            {"data": {"dataset": "idx", "source": "data/raw/mine", "classes": ["a", "a"]}},
            "data: classes must be distinct",
        ),
        (
            {"data": {"dataset": "idx", "source": "data/raw/mine", "classes": ["a"]}},
            "data.classes: List should",
        ),
    ],
)
def test_invalid_value_is_reported_with_its_key(raw: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=r"params\.yaml: ") as error:
        parse_params(raw)
    assert message in str(error.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ParamsError) as error:
        parse_params({"train": {"lr": 0, "batch_size": 0}})
    assert "train.lr" in str(error.value)
    assert "train.batch_size" in str(error.value)


@pytest.mark.parametrize("spelling", ["data/raw/none", "data/raw/none/", "./data/raw/none"])
def test_data_raw_none_means_no_files_in_the_project(spelling: str) -> None:
    assert parse_params({"data": {"source": spelling}}).data.source is None


def test_integer_learning_rate_is_accepted_as_float() -> None:
    assert parse_params({"train": {"lr": 1}}).train.lr == 1.0


def test_missing_file_says_where_to_run_from(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"params.yaml: not found; run from the project root"):
        load_params(tmp_path / "params.yaml")


def test_malformed_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: {lr: [\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_non_mapping_document_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping of sections, got list"):
        load_params(path)


def test_digest_changes_only_with_the_named_sections() -> None:
    base = Params()
    other_eval = parse_params({"evaluate": {"batch_size": 7}})
    other_lr = parse_params({"train": {"lr": 0.1}})
    assert base.digest("train") == other_eval.digest("train")
    assert base.digest("train") != other_lr.digest("train")


def test_channels_default_to_what_the_dataset_holds_and_take_1_or_3() -> None:
    assert Params().data.channels is None
    assert parse_params({"data": {"channels": 1}}).data.channels == 1
    colour = {"dataset": "imagefolder", "source": "data/raw/mine", "channels": 3}
    assert parse_params({"data": colour}).data.channels == 3
