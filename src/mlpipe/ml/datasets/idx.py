"""Reading IDX files (the MNIST format), plain or gzip-compressed, and labelled images from pairs
of them (uint8 images [N, H, W] and uint8 labels [N])."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlpipe.core.errors import DataError

# The third header byte; multi-byte types are stored big-endian.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip detected by content) into a writable native-endian array.

    Raises DataError naming the file when it is missing, unreadable, corrupt or truncated.
    """
    raw, compressed = _read_bytes(path)
    size_note = " (decompressed)" if compressed else ""
    if len(raw) < 4:
        raise DataError(f"{path}: truncated header: {len(raw)} bytes{size_note}, need 4")
    if raw[:2] != b"\0\0":
        raise DataError(f"{path}: bad magic 0x{raw[:4].hex()}; an IDX file starts with 00 00")
    dtype = _DTYPES.get(raw[2])
    if dtype is None:
        known = ", ".join(f"0x{code:02X}" for code in _DTYPES)
        raise DataError(f"{path}: unknown dtype code 0x{raw[2]:02X} (known: {known})")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{path}: truncated header: {len(raw)} bytes{size_note}, need {header_size} for {ndim} dimensions"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else f"{len(raw) - expected} trailing bytes"
        raise DataError(
            f"{path}: {problem}: expected {expected} bytes{size_note} for a "
            f"{dtype.name} array of shape {list(shape)}, got {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's content, decompressed when it is gzip; and whether it was."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if not raw.startswith(_GZIP_MAGIC):
        return raw, False
    try:
        return gzip.decompress(raw), True
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from e


def read_pairs(
    pairs: Sequence[tuple[Path, Path]], class_count: int, hint: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """The images (uint8 [N, H, W]) and int64 labels of every (images, labels) file pair, pooled
    in order; DataError naming the file when a pair does not fit together, a label is not below
    ``class_count`` (``hint`` says how to fix that) or the pairs' images differ in size."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for images_path, labels_path in pairs:
        pair_images = _read_uint8(images_path, 3, "images [N, H, W]")
        pair_labels = _read_uint8(labels_path, 1, "labels [N]")
        if len(pair_labels) != len(pair_images):
            raise DataError(
                f"{labels_path}: {len(pair_labels)} labels, but {images_path} has {len(pair_images)} images"
            )
        if len(pair_labels) and pair_labels.max() >= class_count:
            raise DataError(f"{labels_path}: label {pair_labels.max()} outside 0..{class_count - 1}{hint}")
        if images and pair_images.shape[1:] != images[0].shape[1:]:
            raise DataError(
                f"{images_path}: images are {_size(pair_images)}, but {pairs[0][0]} has {_size(images[0])}"
            )
        images.append(pair_images)
        labels.append(pair_labels)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _size(images: np.ndarray) -> str:
    return f"{images.shape[1]}x{images.shape[2]}"


def _read_uint8(path: Path, ndim: int, layout: str) -> np.ndarray:
    """The IDX array at ``path``, which must be uint8 with ``ndim`` dimensions."""
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise DataError(f"{path}: expected uint8 {layout}, got {array.dtype} {list(array.shape)}")
    return array
