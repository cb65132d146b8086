"""A labelled image tree ``source/<class_name>/*.png`` read as 8-bit grayscale or RGB arrays.

Each file is read by `mlpipe.contracts.images.decode_image`, the function the server reads a
client's image file with, so a served image is read exactly as the training images were.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mlpipe.contracts.data import LabeledImages
from mlpipe.contracts.images import (
    BILINEAR,
    ImageDecoding,
    ImageError,
    ImageHeader,
    decode_image,
    read_header,
)
from mlpipe.core.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png"})
PIXEL_MAX = 255


def load_imagefolder(
    source: Path, image_size: tuple[int, int] | None, channels: int | None = None
) -> LabeledImages:
    """Every image under ``source/<class_name>/``, classes sorted by name, files in name order.

    ``image_size`` is (height, width) to resize to; None requires all images to share one size.
    ``channels`` is 1 (grayscale) or 3 (RGB); None: 3 if any image is colour (an RGB-like mode
    or a palette with a colour in it), else 1. Images of the other kind are converted, and the
    log says how many.
    """
    class_dirs = _class_dirs(source)
    files = [(label, path) for label, class_dir in enumerate(class_dirs) for path in _image_files(class_dir)]
    headers = {path: _header(path) for _, path in files}
    height, width = image_size or _common_size(headers)
    decoding = ImageDecoding(
        height, width, _channels(channels, headers, source), BILINEAR if image_size else None
    )
    images = np.stack([_decode(path, decoding) for _, path in files])
    labels = np.array([label for label, _ in files], dtype=np.int64)
    log.info("read %d images in %d classes from %s", len(images), len(class_dirs), source)
    classes = tuple(class_dir.name for class_dir in class_dirs)
    return LabeledImages(images, labels, classes, PIXEL_MAX, decoding)


def _header(path: Path) -> ImageHeader:
    try:
        return read_header(path)
    except ImageError as e:
        raise DataError(f"{path}: {e}") from e


def _decode(path: Path, decoding: ImageDecoding) -> np.ndarray:
    try:
        return decode_image(path, decoding)
    except ImageError as e:
        raise DataError(f"{path}: {e}") from e


def _common_size(headers: dict[Path, ImageHeader]) -> tuple[int, int]:
    """The (height, width) every image has; DataError naming the first that differs."""
    sizes = {path: (header.height, header.width) for path, header in headers.items()}
    first, size = next(iter(sizes.items()))
    for path, (height, width) in sizes.items():
        if (height, width) != size:
            raise DataError(
                f"{path}: image is {height}x{width} (height x width), but {first} is "
                f"{size[0]}x{size[1]}; set data.image_size in params.yaml to resize them all"
            )
    return size


def _channels(requested: int | None, headers: dict[Path, ImageHeader], source: Path) -> int:
    """The channels to read: ``requested`` (data.channels), else what the images hold; a
    conversion is logged, never silent."""
    colour = sum(header.colour for header in headers.values())
    grey = len(headers) - colour
    chosen = requested or (3 if colour else 1)
    if chosen == 1 and colour:
        log.info(
            "data.channels is 1: converting the %d colour images of %s to grayscale (ITU-R 601-2 luma)",
            colour,
            source,
        )
    elif chosen == 3 and grey:
        why = "data.channels is 3" if requested else f"{colour} of the images are colour"
        log.info("%s: reading the %d grayscale images of %s as RGB (grey in each channel)", why, grey, source)
    return chosen


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
