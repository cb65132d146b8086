"""Atomic writes: a file or directory appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Serialise ``obj`` as stable, human-readable JSON (sorted keys, trailing newline)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as stable JSON atomically."""
    write_text(path, dumps_json(obj))


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write a NumPy array in .npy format atomically (byte-identical for equal arrays)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def replace_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` only if the block succeeds.

    On error the staging directory is removed and ``path`` keeps its previous contents.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it 0700; outputs are world-readable
        if path.exists():
            retired = staging.with_name(staging.name + ".old")
            path.replace(retired)
            staging.replace(path)
            shutil.rmtree(retired)
        else:
            staging.replace(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
