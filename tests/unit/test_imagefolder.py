"""load_imagefolder: a class_name/*.png tree read as grayscale or RGB arrays with sorted classes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlpipe.contracts.images import BILINEAR, ImageDecoding
from mlpipe.core.errors import DataError
from mlpipe.ml.datasets.imagefolder import load_imagefolder


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Save ``pixels`` (uint8 [H, W] or [H, W, 3]) with the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def flat(value: int, height: int = 3, width: int = 4) -> np.ndarray:
    return np.full((height, width), value, dtype=np.uint8)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Three classes created out of name order, two images in "bee" written out of order."""
    source = tmp_path / "images"
    write_image(source / "cat" / "a.png", flat(30))
    write_image(source / "bee" / "b.png", flat(21))
    write_image(source / "bee" / "a.png", flat(20))
    write_image(source / "ant" / "a.png", np.arange(12, dtype=np.uint8).reshape(3, 4))
    return source


def error_message(source: Path, image_size: tuple[int, int] | None = None) -> str:
    with pytest.raises(DataError) as excinfo:
        load_imagefolder(source, image_size)
    return str(excinfo.value)


def test_classes_are_sorted_directory_names_and_labels_index_them(tree: Path) -> None:
    loaded = load_imagefolder(tree, None)

    assert loaded.classes == ("ant", "bee", "cat")
    assert loaded.labels.tolist() == [0, 1, 1, 2]
    assert loaded.labels.dtype == np.int64
    assert loaded.pixel_max == 255


def test_pixels_are_read_exactly_with_files_in_name_order(tree: Path) -> None:
    loaded = load_imagefolder(tree, None)

    assert loaded.images.dtype == np.uint8
    assert loaded.images.shape == (4, 3, 4)
    np.testing.assert_array_equal(loaded.images[0], np.arange(12).reshape(3, 4))
    assert [int(image[0, 0]) for image in loaded.images[1:]] == [20, 21, 30]


def colour_tree(source: Path) -> Path:
    """A red image and a grey one."""
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    write_image(source / "red" / "a.png", red)
    write_image(source / "white" / "a.bmp", flat(200, 2, 2))
    return source


def test_colour_images_are_converted_to_8_bit_grayscale_when_one_channel_is_asked_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    loaded = load_imagefolder(colour_tree(tmp_path), None, channels=1)

    # ITU-R 601-2 luma, as Pillow's "L" conversion: 255 * 299 / 1000
    assert loaded.images.shape == (2, 2, 2)
    assert loaded.images[:, 0, 0].tolist() == [76, 200]
    assert f"data.channels is 1: converting the 1 colour images of {tmp_path} to grayscale" in caplog.text


def test_a_folder_with_a_colour_image_is_read_as_rgb_and_its_grey_images_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    loaded = load_imagefolder(colour_tree(tmp_path), None)

    assert loaded.images.shape == (2, 2, 2, 3)
    assert loaded.channels == 3
    assert loaded.images[:, 0, 0].tolist() == [[255, 0, 0], [200, 200, 200]]
    assert "1 of the images are colour: reading the 1 grayscale images" in caplog.text


def test_a_grayscale_folder_read_as_rgb_repeats_the_grey_and_says_so(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    loaded = load_imagefolder(tree, None, channels=3)

    assert loaded.images.shape == (4, 3, 4, 3)
    np.testing.assert_array_equal(loaded.images[0, ..., 2], np.arange(12).reshape(3, 4))
    assert "data.channels is 3: reading the 4 grayscale images" in caplog.text


def test_a_grey_palette_is_grayscale_and_a_colour_palette_colour(tmp_path: Path) -> None:
    for name, palette in (("grey", [0, 0, 0, 90, 90, 90]), ("colour", [0, 0, 0, 0, 90, 0])):
        image = Image.fromarray(np.eye(3, dtype=np.uint8), mode="P")
        image.putpalette(palette)
        image.save(tmp_path / f"{name}.png")
    for name, channels in (("grey", 1), ("colour", 3)):
        source = tmp_path / f"{name}-tree"
        for class_name in ("a", "b"):
            (source / class_name).mkdir(parents=True)
            (source / class_name / "x.png").write_bytes((tmp_path / f"{name}.png").read_bytes())

        assert load_imagefolder(source, None).channels == channels


def test_the_decoding_of_the_files_is_recorded(tree: Path) -> None:
    assert load_imagefolder(tree, None).decoding == ImageDecoding(3, 4, 1, None)
    assert load_imagefolder(tree, (2, 3), channels=3).decoding == ImageDecoding(2, 3, 3, BILINEAR)


def test_images_are_resized_to_height_by_width(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "wide.png", flat(50, height=4, width=8))
    write_image(tmp_path / "b" / "tall.png", flat(90, height=10, width=2))

    loaded = load_imagefolder(tmp_path, (2, 3))

    assert loaded.images.shape == (2, 2, 3)
    np.testing.assert_array_equal(loaded.images[0], flat(50, 2, 3))
    np.testing.assert_array_equal(loaded.images[1], flat(90, 2, 3))


def test_suffixes_are_case_insensitive_and_other_and_hidden_files_ignored(
    tmp_path: Path,
) -> None:
    write_image(tmp_path / "a" / "one.PNG", flat(1))
    write_image(tmp_path / "a" / "two.JPEG", flat(200))
    write_image(tmp_path / "a" / ".hidden.png", flat(99))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "b" / "three.jpg", flat(100))
    write_image(tmp_path / ".cache" / "x.png", flat(99))

    loaded = load_imagefolder(tmp_path, None)

    assert loaded.classes == ("a", "b")
    assert loaded.labels.tolist() == [0, 0, 1]
    assert int(loaded.images[0, 0, 0]) == 1
    # JPEG is lossy; a flat image stays within a level or two of its value
    assert abs(int(loaded.images[1, 0, 0]) - 200) <= 2


def test_size_mismatch_names_the_file_and_expected_size_and_suggests_image_size(
    tree: Path,
) -> None:
    odd = write_image(tree / "bee" / "c.png", flat(22, height=5, width=4))

    message = error_message(tree)

    assert message == (
        f"{odd}: image is 5x4 (height x width), but {tree / 'ant' / 'a.png'} is 3x4; "
        "set data.image_size in params.yaml to resize them all"
    )


def test_corrupt_image_names_the_file(tree: Path) -> None:
    corrupt = tree / "bee" / "c.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")

    assert error_message(tree).startswith(f"{corrupt}: unreadable image (")


def test_truncated_image_names_the_file(tree: Path, tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(3, 4), dtype=np.uint8)
    whole = write_image(tmp_path / "whole.png", noise).read_bytes()
    truncated = tree / "cat" / "b.png"
    truncated.write_bytes(whole[: len(whole) // 2])

    assert error_message(tree).startswith(f"{truncated}: unreadable image (")


def test_class_directory_without_images_is_reported(tree: Path) -> None:
    empty = tree / "dog"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")

    assert error_message(tree) == f"{empty}: no images (.bmp, .jpeg, .jpg, .png)"


def test_missing_source_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "absent"

    assert error_message(source).startswith(f"{source}: not found; set data.source")


def test_source_that_is_a_file_is_reported(tmp_path: Path) -> None:
    source = write_image(tmp_path / "a.png", flat(1))

    assert error_message(source).startswith(f"{source}: not a directory;")


def test_source_without_class_directories_is_reported(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", flat(1))

    assert error_message(tmp_path).startswith(f"{tmp_path}: no class directories;")


def test_a_single_class_is_reported(tmp_path: Path) -> None:
    write_image(tmp_path / "only" / "a.png", flat(1))

    assert error_message(tmp_path) == (
        f"{tmp_path}: only one class directory (only); a classifier needs at least 2"
    )
