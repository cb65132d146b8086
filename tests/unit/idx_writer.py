"""Writes IDX files for tests, independently of the reader under test."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# IDX dtype codes by NumPy kind and item size.
DTYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` in IDX format: header, big-endian dims, big-endian data."""
    code = DTYPE_CODES[f"{array.dtype.kind}{array.dtype.itemsize}"]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``array`` to ``path`` as IDX, gzip-compressed if asked; return ``path``."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
