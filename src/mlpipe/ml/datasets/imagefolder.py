"""A labelled image tree ``source/<class_name>/*.png`` read as 8-bit grayscale arrays."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlpipe.contracts.data import LabeledImages
from mlpipe.core.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png"})
PIXEL_MAX = 255


def load_imagefolder(source: Path, image_size: tuple[int, int] | None) -> LabeledImages:
    """Every image under ``source/<class_name>/``, classes sorted by name, files in name order.

    ``image_size`` is (height, width) to resize to; None requires all images to share one size.
    """
    class_dirs = _class_dirs(source)
    images: list[np.ndarray] = []
    labels: list[int] = []
    first: Path | None = None
    for label, class_dir in enumerate(class_dirs):
        for path in _image_files(class_dir):
            image = _read_gray(path, image_size)
            if first is None:
                first = path
            elif image.shape != images[0].shape:
                raise DataError(
                    f"{path}: image is {_size(image)} (height x width), but {first} is "
                    f"{_size(images[0])}; set data.image_size in params.yaml to resize them all"
                )
            images.append(image)
            labels.append(label)
    log.info("read %d images in %d classes from %s", len(images), len(class_dirs), source)
    classes = tuple(class_dir.name for class_dir in class_dirs)
    return LabeledImages(np.stack(images), np.array(labels, dtype=np.int64), classes, PIXEL_MAX)


def _size(image: np.ndarray) -> str:
    return f"{image.shape[0]}x{image.shape[1]}"


def _visible(directory: Path) -> list[Path]:
    """The entries of ``directory`` not starting with a dot, sorted by name."""
    try:
        return sorted(path for path in directory.iterdir() if not path.name.startswith("."))
    except OSError as e:
        raise DataError(f"{directory}: cannot list ({e})") from e


def _class_dirs(source: Path) -> list[Path]:
    """The class directories of ``source``, sorted; at least two of them."""
    if not source.is_dir():
        what = "not a directory" if source.exists() else "not found"
        raise DataError(
            f"{source}: {what}; set data.source in params.yaml to a directory of class_name/*.png folders"
        )
    class_dirs = [path for path in _visible(source) if path.is_dir()]
    if not class_dirs:
        raise DataError(f"{source}: no class directories; expected {source}/<class_name>/*.png")
    if len(class_dirs) < 2:
        raise DataError(
            f"{source}: only one class directory ({class_dirs[0].name}); a classifier needs at least 2"
        )
    return class_dirs


def _image_files(class_dir: Path) -> list[Path]:
    """The image files of one class directory, sorted by name; at least one."""
    files = [path for path in _visible(class_dir) if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not files:
        raise DataError(f"{class_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _read_gray(path: Path, image_size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 [H, W] grayscale, resized bilinearly to ``image_size`` if given."""
    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from e
    if image_size is not None:
        height, width = image_size
        gray = gray.resize((width, height), Image.Resampling.BILINEAR)
    return np.array(gray, dtype=np.uint8)
