"""load_idx_pairs: any directory of IDX image/label pairs, named by params' classes, unchecked by
checksum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlpipe.core.errors import DataError
from mlpipe.core.params import parse_params
from mlpipe.ml.datasets.idx_pairs import load_idx_pairs
from mlpipe.ml.datasets.sources import load_source
from tests.unit.idx_writer import write_idx

CLASSES = ("cat", "dog", "eel")
RNG = np.random.default_rng(0)
TRAIN_X = RNG.integers(0, 256, size=(6, 4, 5), dtype=np.uint8)
TRAIN_Y = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
TEST_X = RNG.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
TEST_Y = np.array([2, 1, 0], dtype=np.uint8)


def write_pair(
    source: Path, name: str, images: np.ndarray, labels: np.ndarray, compress: bool = False
) -> None:
    source.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(source / f"{name}-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(source / f"{name}-labels-idx1-ubyte{suffix}", labels, compress=compress)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A training pair (gzipped) and a test pair (plain), MNIST's names."""
    write_pair(tmp_path / "idx", "train", TRAIN_X, TRAIN_Y, compress=True)
    write_pair(tmp_path / "idx", "t10k", TEST_X, TEST_Y)
    return tmp_path / "idx"


def error_message(source: Path, classes: tuple[str, ...] = CLASSES) -> str:
    with pytest.raises(DataError) as error:
        load_idx_pairs(source, classes)
    return str(error.value)


def test_every_pair_is_pooled_in_name_order_with_the_classes_of_params(source: Path) -> None:
    loaded = load_idx_pairs(source, CLASSES)

    np.testing.assert_array_equal(loaded.images, np.concatenate([TEST_X, TRAIN_X]))  # t10k < train
    assert loaded.labels.tolist() == [*TEST_Y.tolist(), *TRAIN_Y.tolist()]
    assert (loaded.classes, loaded.pixel_max, loaded.channels) == (CLASSES, 255, 1)


def test_params_select_the_reader_and_name_the_classes(source: Path) -> None:
    params = parse_params({"data": {"dataset": "idx", "source": str(source), "classes": list(CLASSES)}})

    assert load_source(params.data).classes == CLASSES


def test_one_pair_is_a_dataset_and_the_dotted_spelling_is_read(tmp_path: Path) -> None:
    write_idx(tmp_path / "all-images.idx3-ubyte", TRAIN_X)
    write_idx(tmp_path / "all-labels.idx1-ubyte", TRAIN_Y)

    assert len(load_idx_pairs(tmp_path, CLASSES)) == 6


def test_a_label_without_a_class_name_asks_for_more_names(source: Path) -> None:
    message = error_message(source, CLASSES[:2])

    assert message == (
        f"{source / 't10k-labels-idx1-ubyte'}: label 2 outside 0..1; data.classes in params.yaml "
        "names 2 classes: give one name per label value"
    )


def test_images_without_labels_are_reported(source: Path) -> None:
    write_idx(source / "extra-images-idx3-ubyte", TEST_X)

    assert error_message(source).startswith(f"{source / 'extra-images-idx3-ubyte'}: no labels file beside it")


def test_labels_without_images_are_reported(source: Path) -> None:
    write_idx(source / "extra-labels-idx1-ubyte", TEST_Y)

    assert error_message(source).startswith(f"{source / 'extra-labels-idx1-ubyte'}: no images file beside it")


def test_the_same_pair_twice_is_refused(source: Path) -> None:
    write_idx(source / "train-images-idx3-ubyte", TRAIN_X)

    assert error_message(source) == (
        f"{source}: both train-images-idx3-ubyte and train-images-idx3-ubyte.gz hold 'train'; keep one"
    )


def test_pairs_of_different_image_sizes_are_refused(source: Path) -> None:
    write_pair(source, "t10k", TEST_X[:, :3], TEST_Y)

    assert error_message(source) == (
        f"{source / 'train-images-idx3-ubyte.gz'}: images are 4x5, "
        f"but {source / 't10k-images-idx3-ubyte'} has 3x5"
    )


@pytest.mark.parametrize("content", ["nothing", "other files"])
def test_a_directory_without_pairs_is_reported(tmp_path: Path, content: str) -> None:
    if content == "other files":
        (tmp_path / "README.txt").write_text("not IDX")

    assert error_message(tmp_path).startswith(
        f"{tmp_path}: no IDX files; expected pairs <name>-images-idx3-ubyte"
    )


def test_a_missing_source_is_reported(tmp_path: Path) -> None:
    assert error_message(tmp_path / "absent").startswith(f"{tmp_path / 'absent'}: not found; set data.source")
