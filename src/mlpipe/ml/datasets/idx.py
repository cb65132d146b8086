"""Reading IDX files (the MNIST format), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
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
