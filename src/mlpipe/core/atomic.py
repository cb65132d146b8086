"""Atomic writes: a file or directory appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# Temporary names carry the writer's pid, so a later run can tell what a killed one left behind.
SUFFIX = ".tmp"


def _prefix(name: str) -> str:
    return f".{name}.pid{os.getpid()}."


_WRITER = re.compile(r"\.pid(\d+)\.")


def _abandoned(entry: Path) -> bool:
    """Whether ``entry`` is a temporary name of a process that no longer runs."""
    found = _WRITER.search(entry.name)
    if not (entry.name.startswith(".") and entry.name.endswith(SUFFIX) and found):
        return False
    pid = int(found.group(1))
    return pid != os.getpid() and not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned(directory: Path) -> list[Path]:
    """Delete the temporary files and staging directories killed writers left in ``directory``."""
    removed = []
    for entry in directory.glob(".*" + SUFFIX) if directory.is_dir() else ():
        if _abandoned(entry):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path.name), suffix=SUFFIX)
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
    # imported here: copier's task (mlpipe.integrations.template) writes text before the
    # project's environment, numpy included, exists
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def replace_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` only if the block succeeds.

    On error the staging directory is removed and ``path`` keeps its previous contents.
    """
    with staging_dir(path.parent, path.name) as staging:
        yield staging
        if path.exists():
            retired = staging.with_name(staging.name + ".old" + SUFFIX)
            path.replace(retired)
            staging.replace(path)
            shutil.rmtree(retired)
        else:
            staging.replace(path)


@contextlib.contextmanager
def staging_dir(parent: Path, name: str) -> Iterator[Path]:
    """A world-readable temporary directory in ``parent``, removed when the block ends.

    What a killed process left in ``parent`` under such names is removed first.
    """
    parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(parent)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=_prefix(name), suffix=SUFFIX))
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700; outputs are world-readable
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def replace_files(targets: Iterable[Path]) -> contextlib.AbstractContextManager[dict[Path, Path]]:
    """Stage several outputs together: yields {target: staged path}; all move into place only
    if the block succeeds, so a failure leaves every previous output as it was."""
    return _replace_files(tuple(targets))


@contextlib.contextmanager
def _replace_files(targets: tuple[Path, ...]) -> Iterator[dict[Path, Path]]:
    parent = Path(os.path.commonpath([t.parent.resolve() for t in targets])) if targets else Path()
    with staging_dir(parent, "outputs") as staging:
        staged = {target: staging / f"{index}-{target.name}" for index, target in enumerate(targets)}
        yield staged
        for target, source in staged.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            source.replace(target)
